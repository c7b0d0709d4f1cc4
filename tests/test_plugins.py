"""Hook specs, loading, composition rules and third-party plugins through entry points."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from robustdistill import LossTerm, Method, Option, RobustDistillError, hookimpl, hookspecs
from robustdistill.engine import resolve_methods
from robustdistill.plugin_manager import DISABLE_AUTOLOAD_ENV, PluginError, load_plugins
from robustdistill.testing import plugin_host, run_step, step_context, train_config


def test_hook_specs_and_their_rules():
    host = load_plugins(autoload=False)
    expected = {"register_methods", "register_options", "register_models", "register_datasets",
                "register_eval_attacks", "teacher_forward", "input_gradient", "attack", "loss",
                "train_start", "epoch_start", "step_end", "epoch_end", "train_end"}
    assert expected <= set(vars(host.pm.hook))
    for name in expected:
        spec = getattr(host.pm.hook, name).spec
        assert spec.opts["firstresult"] == (name in ("teacher_forward", "input_gradient", "attack")), name
        assert getattr(hookspecs, name).__doc__, f"hook {name} is undocumented"


def test_builtins_are_loaded_with_sources_and_hooks():
    host = load_plugins(autoload=False)
    infos = {i.name: i for i in host.plugin_infos()}
    assert {"core", "natural", "at", "trades"} <= set(infos)
    assert all(i.source == "built-in" for i in infos.values())
    assert set(infos["at"].hooks) >= {"attack", "loss", "register_methods"}
    assert infos["trades"].methods == ("trades",)
    assert set(host.registry.methods) >= {"natural", "at", "trades"}
    assert {"clean", "fgsm", "pgd20", "cw", "autoattack"} <= set(host.registry.eval_attacks)
    assert "fashion-mnist" in host.registry.datasets
    assert host.registry.model("wrn-34-10").name == "wrn-D-K"


class AddOn:
    """A method without an attack that composes on top of a base (as IGDM does on PGD-AT)."""

    calls = 0

    @hookimpl
    def register_methods(self, register):
        register(Method("addon", "test add-on", default_base="at"))

    @hookimpl
    def register_options(self, register):
        register(Option("--addon-weight", 0.5, "weight of the add-on term"))

    @hookimpl
    def loss(self, ctx):
        AddOn.calls += 1
        return LossTerm("addon", (ctx.student_out("adv", ctx.x_adv) ** 2).mean(), weight=ctx.config.addon_weight)


def test_addon_alone_gets_its_default_base():
    host = plugin_host(AddOn())
    assert resolve_methods(host, ["addon"]) == ["at", "addon"]
    assert resolve_methods(host, ["trades", "addon"]) == ["trades", "addon"]


def test_two_attacks_and_unknown_plugins_are_refused():
    host = plugin_host()
    with pytest.raises(RobustDistillError, match="at and trades both run an attack"):
        resolve_methods(host, ["at", "trades"])
    with pytest.raises(RobustDistillError, match="unknown plugin 'igdn'; known plugins: adaad, ard, at, edgereg, gradnorm, igam, igdm, natural, pag, rrm, rslad, trades"):
        resolve_methods(host, ["igdn"])


def test_loss_collects_named_weighted_terms_and_order_does_not_matter():
    host = plugin_host(AddOn())
    results = []
    for methods in (["at", "addon"], ["addon", "at"]):
        torch.manual_seed(0)
        ctx = step_context(host, methods, seed=1)
        ctx.x_adv = ctx.hooks.attack(ctx)
        terms = ctx.hooks.loss(ctx)
        assert sorted((t.name, t.weight) for t in terms) == [("addon", 0.5), ("ce_adv", 1.0)]
        results.append(sum(t.weight * t.value for t in terms).item())
    assert results[0] == pytest.approx(results[1])


def test_unselected_method_plugins_are_inactive():
    host = plugin_host(AddOn())
    AddOn.calls = 0
    run_step(host, ["trades"])
    assert AddOn.calls == 0
    run_step(host, ["trades", "addon"])
    assert AddOn.calls == 1


def test_student_forward_is_shared_between_composed_plugins():
    host = plugin_host(AddOn())
    ctx = step_context(host, ["at", "addon"])
    calls = []
    ctx.student.register_forward_hook(lambda *_: calls.append(1))
    ctx.x_adv = ctx.hooks.attack(ctx)
    calls.clear()
    ctx.hooks.loss(ctx)
    assert len(calls) == 1, "S(x_adv) computed once for both plugins"


class Faulty:
    @hookimpl
    def register_methods(self, register):
        register(Method("faulty", "raises in its loss"))

    @hookimpl
    def loss(self, ctx):
        raise ZeroDivisionError("boom")


def test_a_plugin_raising_in_a_hook_is_named():
    host = plugin_host(Faulty())
    ctx = step_context(host, ["faulty"])
    with pytest.raises(PluginError, match="plugin 'Faulty' failed in hook 'loss': ZeroDivisionError: boom"):
        ctx.hooks.loss(ctx)


class Replacement:
    """Replaces the core teacher forward by returning first."""

    @hookimpl
    def teacher_forward(self, ctx, x):
        from robustdistill import TeacherOutput
        return TeacherOutput(logits=torch.zeros(len(x), 3))


def test_teacher_forward_default_is_trylast_and_cached_per_key():
    from robustdistill.testing import tiny_model
    host = plugin_host()
    teacher = tiny_model(seed=1)
    ctx = step_context(host, ["natural"], teacher=teacher)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    out = ctx.teacher_out("clean", ctx.x)
    ctx.teacher_out("clean", ctx.x)
    assert len(calls) == 1 and not out.logits.requires_grad and out.features is not None
    host = plugin_host(Replacement())
    ctx = step_context(host, ["natural"], teacher=teacher)
    assert torch.equal(ctx.teacher_out("clean", ctx.x).logits, torch.zeros(4, 3))


def test_input_gradient_default_is_exact_and_differentiable():
    host = plugin_host()
    ctx = step_context(host, ["natural"])
    x = torch.rand(2, 3, requires_grad=True)
    grad = ctx.input_gradient(torch.nn.Identity(), x, lambda z: (z ** 3).sum(), create_graph=True)
    assert torch.allclose(grad, 3 * x ** 2)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert torch.allclose(second, 6 * x)


def test_plugin_options_reach_the_config_and_help():
    host = plugin_host(AddOn())
    config = train_config(host, "--addon-weight", "1/4", "--trades-beta", "3")
    assert config.addon_weight == 0.25 and config.trades_beta == 3.0


# -- third-party plugins installed with pip -----------------------------------------------------------

GOOD_PLUGIN = '''
"""A third-party method: CE on clean inputs, scaled."""
import torch.nn.functional as F
from robustdistill import LossTerm, Method, Option, hookimpl

@hookimpl
def register_methods(register):
    register(Method("scaled-ce", "scaled cross-entropy"))

@hookimpl
def register_options(register):
    register(Option("--scaled-ce-factor", 2.0, "the scale"))

@hookimpl
def loss(ctx):
    return LossTerm("scaled_ce", F.cross_entropy(ctx.student_out("clean", ctx.x), ctx.y),
                    weight=ctx.config.scaled_ce_factor)
'''


def _make_package(root, dist, module, source):
    pkg = root / dist
    pkg.mkdir()
    (pkg / f"{module}.py").write_text(textwrap.dedent(source))
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.robustdistill]
        {module.replace("_", "-")} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    '''))
    return pkg


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two third-party plugins pip-installed into a private directory: one good, one broken."""
    root = tmp_path_factory.mktemp("thirdparty")
    target = root / "site"
    good = _make_package(root, "rd-scaled-ce", "rd_scaled_ce", GOOD_PLUGIN)
    broken = _make_package(root, "rd-broken", "rd_broken", "import not_a_module_anywhere\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(good), str(broken)], check=True)
    return target


def _cli(site, *args, disable=False, tmp_path=None):
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop(DISABLE_AUTOLOAD_ENV, None)
    if disable:
        env[DISABLE_AUTOLOAD_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "robustdistill", *args], env=env, capture_output=True,
                          text=True, cwd=tmp_path)


def test_third_party_plugin_is_listed_and_broken_one_only_warns(site):
    result = _cli(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["rd-scaled-ce"]["source"] == "third-party"
    assert plugins["rd-scaled-ce"]["version"] == "1.2.3"
    assert plugins["rd-scaled-ce"]["methods"] == ["scaled-ce"]
    assert "loss" in plugins["rd-scaled-ce"]["hooks"]
    assert "rd-broken" not in plugins
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "rd-broken" in warnings[0] and "not_a_module_anywhere" in warnings[0]
    table = _cli(site, "plugins")
    assert table.returncode == 0 and "rd-scaled-ce" in table.stdout and "third-party" in table.stdout


def test_third_party_plugin_options_show_in_train_help(site):
    result = _cli(site, "train", "--help")
    assert result.returncode == 0
    assert "--scaled-ce-factor" in result.stdout and "plugin rd-scaled-ce" in result.stdout


def test_autoload_can_be_disabled(site):
    result = _cli(site, "plugins", "--json", disable=True)
    assert result.returncode == 0 and result.stderr == ""
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "rd-scaled-ce" not in names and {"core", "at"} <= names


def test_third_party_method_is_usable(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    host = load_plugins(autoload=True)
    terms = run_step(host, ["scaled-ce"])
    assert [(t.name, t.weight) for t in terms] == [("scaled_ce", 2.0)]
