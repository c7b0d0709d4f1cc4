"""Hook specs, loading, composition rules and third-party plugins through entry points."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from robustdistill import LossTerm, Method, Option, RobustDistillError, hookimpl, hookspecs
from robustdistill._manager import BLOCK_ENV, DISABLE_AUTOLOAD_ENV, PluginError, load_plugins
from robustdistill.testing import attack as run_attack
from robustdistill.testing import HookRecorder, loss_terms, plugin_host, run_step, step_context, train_config, train_run


def test_hook_specs_and_their_rules():
    host = load_plugins(autoload=False)
    expected = {"register_methods", "register_options", "register_models", "register_datasets",
                "register_eval_attacks", "resolve_options", "teacher_forward", "input_gradient", "attack",
                "student_inputs", "loss", "train_start", "epoch_start", "step_end", "epoch_end", "checkpoint_saved",
                "train_end"}
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
        register(Method(name="addon", summary="test add-on", default_base="at"))

    @hookimpl
    def register_options(self, register):
        register(Option(flag="--addon-weight", default=0.5, help="weight of the add-on term"))

    @hookimpl
    def loss(self, ctx):
        AddOn.calls += 1
        return LossTerm("addon", (ctx.student_out("adv", ctx.x_adv) ** 2).mean(), weight=ctx.config.addon.weight)


def test_addon_alone_gets_its_default_base():
    host = plugin_host(AddOn())
    assert host.resolve_methods(["addon"]) == ["at", "addon"]
    assert host.resolve_methods(["trades", "addon"]) == ["trades", "addon"]


def test_two_attacks_and_unknown_plugins_are_refused():
    host = plugin_host()
    with pytest.raises(RobustDistillError, match="at and trades both run an attack"):
        host.resolve_methods(["at", "trades"])
    with pytest.raises(RobustDistillError, match="unknown plugin 'igdn'; known plugins: adaad, adaiad, akd, ard, at, edgereg, fairard, gradnorm, iad, iad2, igam, igdm, mtard, natural, pag, peeraid, rrm, rslad, saad, trades"):
        host.resolve_methods(["igdn"])


def test_loss_collects_named_weighted_terms_and_order_does_not_matter():
    host = plugin_host(AddOn())
    results = []
    for methods in (["at", "addon"], ["addon", "at"]):
        torch.manual_seed(0)
        ctx = step_context(host, methods, seed=1)
        ctx.x_adv = run_attack(ctx)
        terms = loss_terms(ctx)
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
    ctx.x_adv = run_attack(ctx)
    calls.clear()
    loss_terms(ctx)
    assert len(calls) == 1, "S(x_adv) computed once for both plugins"


class Faulty:
    @hookimpl
    def register_methods(self, register):
        register(Method(name="faulty", summary="raises in its loss"))

    @hookimpl
    def loss(self, ctx):
        raise ZeroDivisionError("boom")


def test_a_plugin_raising_in_a_hook_is_named():
    host = plugin_host(Faulty())
    ctx = step_context(host, ["faulty"])
    with pytest.raises(PluginError, match="plugin 'faulty' failed in hook 'loss': ZeroDivisionError: boom") as info:
        loss_terms(ctx)
    assert isinstance(info.value.__cause__, ZeroDivisionError), "the original traceback is kept"


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
    assert config.addon.weight == 0.25 and config.trades.beta == 3.0
    assert config.options_of("addon") is config.addon


# -- third-party plugins installed with pip -----------------------------------------------------------

GOOD_PLUGIN = '''
"""A third-party method: CE on clean inputs, scaled."""
import torch.nn.functional as F
from robustdistill import LossTerm, Method, Option, hookimpl

@hookimpl
def register_methods(register):
    register(Method(name="scaled-ce", summary="scaled cross-entropy"))

@hookimpl
def register_options(register):
    register(Option(flag="--scaled-ce-factor", default=2.0, help="the scale"))

@hookimpl
def loss(ctx):
    return LossTerm("scaled_ce", F.cross_entropy(ctx.student_out("clean", ctx.x), ctx.y),
                    weight=ctx.config.scaled_ce.factor)
'''


def _make_package(root, dist, module, source, entry=None):
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
        {entry or module.replace("_", "-")} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    '''))
    return pkg


@pytest.fixture(scope="module")
def site(tmp_path_factory):  # the tests that use it are in the slow tier: they pip-install packages
    """Two third-party plugins pip-installed into a private directory: one good, one broken."""
    root = tmp_path_factory.mktemp("thirdparty")
    target = root / "site"
    good = _make_package(root, "rd-scaled-ce", "rd_scaled_ce", GOOD_PLUGIN, entry="scaled-ce")
    broken = _make_package(root, "rd-broken", "rd_broken", "import not_a_module_anywhere\n")
    clash = _make_package(root, "rd-clash", "rd_clash", CLASHING_PLUGIN)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(good), str(broken), str(clash)], check=True)
    return target


CLASHING_PLUGIN = '''
from robustdistill import Method, Option, hookimpl

@hookimpl
def register_methods(register):
    register(Method(name="rd-clash", summary="a method whose option clashes"))

@hookimpl
def register_options(register):
    register(Option(flag="--eps", default=0.5, help="clashes with the core --eps"))
'''


def _cli(site, *args, disable=False, tmp_path=None, env=None):
    env = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    env.pop(DISABLE_AUTOLOAD_ENV, None)
    if disable:
        env[DISABLE_AUTOLOAD_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "robustdistill", *args], env=env, capture_output=True,
                          text=True, cwd=tmp_path)


@pytest.mark.slow
def test_third_party_plugin_is_listed_and_broken_ones_only_warn(site):
    result = _cli(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["scaled-ce"]["source"] == "third-party"
    assert plugins["scaled-ce"]["version"] == "1.2.3"
    assert plugins["scaled-ce"]["methods"] == ["scaled-ce"]
    assert "loss" in plugins["scaled-ce"]["hooks"]
    assert "rd-broken" not in plugins and "rd-clash" not in plugins
    warnings = sorted(line for line in result.stderr.splitlines() if line.strip())
    assert len(warnings) == 2, warnings
    assert "rd-broken" in warnings[0] and "not_a_module_anywhere" in warnings[0]
    assert "rd-clash" in warnings[1] and "--eps clashes with the core options" in warnings[1]
    table = _cli(site, "plugins")
    assert table.returncode == 0 and "scaled-ce" in table.stdout and "third-party" in table.stdout


@pytest.mark.slow
def test_a_skipped_plugin_is_named_when_selected(site, tmp_path):
    result = _cli(site, "train", "--plugin", "rd-clash", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "plugin 'rd-clash' is installed but was not loaded: register_options raised ValueError: option --eps " \
           "clashes with the core options" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_installed_plugin_can_be_blocked(site, tmp_path):
    result = _cli(site, "plugins", "--json", env={BLOCK_ENV: "scaled-ce, rd-broken"})
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "scaled-ce" not in names and "rd-broken" not in result.stderr
    result = _cli(site, "train", "--plugin", "scaled-ce", env={BLOCK_ENV: "scaled-ce"})
    assert result.returncode == 2 and f"plugin 'scaled-ce' is blocked by ${BLOCK_ENV}" in result.stderr


@pytest.mark.slow
def test_third_party_plugin_options_show_in_train_help(site):
    result = _cli(site, "train", "--help")
    assert result.returncode == 0
    assert "--scaled-ce-factor" in result.stdout and "plugin scaled-ce" in result.stdout
    assert result.stdout.count("(default: 2.0)") >= 1 and "(default: 2.0) (default" not in result.stdout


@pytest.mark.slow
def test_autoload_can_be_disabled(site):
    result = _cli(site, "plugins", "--json", disable=True)
    assert result.returncode == 0 and result.stderr == ""
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "scaled-ce" not in names and {"core", "at"} <= names


@pytest.mark.slow
def test_third_party_method_is_usable(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    host = load_plugins(autoload=True)
    terms = run_step(host, ["scaled-ce"])
    assert [(t.name, t.weight) for t in terms] == [("scaled_ce", 2.0)]


# -- isolation and the configuration -------------------------------------------------------------------

class Unprefixed:
    @hookimpl
    def register_options(self, register):
        register(Option(flag="--weight", default=1.0, help="an option without its plugin's prefix"))


class RaisingRegistration:
    @hookimpl
    def register_methods(self, register):
        raise KeyError("no")


def test_badly_registering_plugins_are_skipped_with_one_warning():
    with pytest.warns(UserWarning) as caught:
        host = plugin_host(Unprefixed(), RaisingRegistration(), AddOn())
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "'raisingregistration': register_methods raised KeyError" in messages[0]
    assert "'unprefixed': " in messages[1] and "must start with --unprefixed-" in messages[1]
    assert "unprefixed" not in host.registry.options and "addon" in host.registry.methods
    with pytest.raises(RobustDistillError, match="'unprefixed' is installed but was not loaded"):
        host.resolve_methods(["unprefixed"])


def test_the_configuration_is_immutable_and_grouped_per_plugin():
    import dataclasses
    host = plugin_host(AddOn())
    config = train_config(host, "--addon-weight", "3", "--igdm-clip-minus")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eps = 0.3
    with pytest.raises(TypeError):
        config.igdm.values["alpha"] = 1.0
    assert config.igdm.clip_minus is True and train_config(host).igdm.clip_minus is False
    data = config.to_dict()
    assert data["plugins"]["addon"] == {"weight": 3.0} and "addon_weight" not in data
    assert type(config).from_dict(data).to_dict() == data


def test_boolean_plugin_options_are_flags():
    host = plugin_host()
    assert train_config(host, "--igdm-clip-minus").igdm.clip_minus is True
    assert train_config(host, "--igdm-clip-minus", "--no-igdm-clip-minus").igdm.clip_minus is False
    with pytest.raises(RobustDistillError, match="ignored explicit argument|expected"):
        train_config(host, "--igdm-clip-minus=maybe")


def test_debug_prints_a_plugin_traceback(tmp_path, capsys, monkeypatch):
    from robustdistill import _cli as cli, _manager as plugin_manager
    monkeypatch.setattr(plugin_manager, "load_plugins", lambda: plugin_host(Faulty()))
    args = ["train", "--dataset", "synthetic", "--plugin", "faulty", "--val-split", "0"]
    assert cli.main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed in hook 'loss'" in err and "--debug" in err
    assert cli.main(["--debug", *args, "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err


class DeclaresAdv:
    @hookimpl
    def register_methods(self, register):
        register(Method(name="declares-adv", summary="declares S(x_adv) and reads another tensor under its name",
                        default_base="at"))

    @hookimpl
    def student_inputs(self, ctx):
        return {"adv": ctx.x_adv}

    @hookimpl
    def loss(self, ctx):
        return LossTerm("drift", ctx.student_out("adv", ctx.x).sum())


def test_a_declared_input_cannot_drift_from_what_the_loss_reads():
    host = plugin_host(DeclaresAdv())
    ctx = step_context(host, ["declares-adv"])
    ctx.x_adv = run_attack(ctx)
    with pytest.raises(RobustDistillError, match="declared in student_inputs as another tensor"):
        loss_terms(ctx)


def test_the_whole_lifecycle_runs_in_order_on_the_synthetic_dataset(tmp_path):
    recorder = HookRecorder()
    host = plugin_host(recorder, names=["recorder"])
    run = train_run(host, ["at"], tmp_path / "run", "--epochs", "2")
    names = recorder.names()
    steps = run.view.steps_per_epoch
    registration = [n for n in names if n.startswith("register_")]
    assert names[:len(registration)] == registration and len(registration) == 7, "registration comes first, once"
    names = names[len(registration):]
    assert names[:2] == ["resolve_options", "train_start"] and names[-1] == "train_end"
    assert recorder.calls[len(registration)] == ("resolve_options", "at")
    assert names.count("epoch_start") == 2 and names.count("epoch_end") == 2
    step_hooks = ["attack", "student_inputs", "loss", "sample_weights", "step_end"]
    assert all(names.count(hook) == 2 * steps for hook in step_hooks)
    first_epoch = names[2:names.index("epoch_end")]
    assert first_epoch[0] == "epoch_start" and first_epoch[1:6] == step_hooks
    assert names[names.index("epoch_end") + 1] == "checkpoint_saved"
    assert [m["epoch"] for m in run.view.history] == [1, 2] and "val_pgd" in run.view.history[0]
    assert ("step_end", (0, ("ce_adv",))) in recorder.calls
