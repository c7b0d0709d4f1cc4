"""docs/plugins.md is the plugin authors' reference: every hook, argument and view attribute is in it, and
its two worked plugins work."""
import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from robustdistill import RunView, StepContext, hookspecs
from robustdistill.testing import attack as run_attack
from robustdistill.testing import loss_terms, options, plugin_host, run_step, step_context, tiny_model

DOC = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
HOOKS = [name for name, f in vars(hookspecs).items() if getattr(f, "robustdistill_spec", None) is not None]


def test_every_hook_is_documented_with_its_arguments():
    assert len(HOOKS) == 18
    for name in HOOKS:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({args})`" in DOC, f"{name}({args}) is not documented in docs/plugins.md"
    documented = set(re.findall(r"^### `(\w+)\(", DOC, flags=re.M))
    assert documented == set(HOOKS), "docs/plugins.md documents hooks that do not exist"


def test_what_hooks_see_is_documented():
    view = {f.name for f in dataclasses.fields(RunView) if f.name != "sink"} | {"dataset", "lr", "add_module"}
    step = {"x", "y", "x_adv", "delta", "epoch", "epochs", "step", "steps_per_epoch", "config", "student",
            "attack_student", "teacher", "run", "state", "student_out", "student_input", "teacher_out",
            "teacher_outs", "perturb", "attack_objective", "attack_spec", "input_gradient"}
    public_step = {n for n in dir(StepContext) if not n.startswith("_")} | {
        f.name for f in dataclasses.fields(StepContext) if not f.name.startswith("_")}
    assert public_step - {"hooks", "trainer", "run_student_inputs"} == step, "a new StepContext member needs a doc row"
    for name in view | step:
        assert f"`{name}" in DOC, f"{name} is not documented in docs/plugins.md"


def _doc_module(name):
    """The code block of docs/plugins.md that starts with ``# file: NAME.py``, imported as a module."""
    block = re.search(rf"```python\n# file: {name}\.py\n(.*?)```", DOC, flags=re.S).group(1)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(block, f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


def test_the_worked_add_on_trains_on_any_base():
    plugin = _doc_module("rd_logit_pairing_doc")
    host = plugin_host(plugin, names=["logit-pairing"])
    assert host.resolve_methods(["logit-pairing"]) == ["at", "logit-pairing"]
    terms = run_step(host, ["logit-pairing"], config=options(host, logit_pairing_weight=2.0))
    assert {t.name: t.weight for t in terms} == {"ce_adv": 1.0, "logit_pairing": 2.0}
    terms = run_step(host, ["rslad", "logit-pairing"], teacher=tiny_model(seed=1))
    assert {t.name for t in terms} == {"kl_adv", "kl_clean", "logit_pairing"}


def test_the_worked_base_method_attacks_with_one_step_and_composes_with_igdm():
    plugin = _doc_module("rd_fast_at_doc")
    host = plugin_host(plugin, names=["fast-at"])
    ctx = step_context(host, ["fast-at"], config=options(host, eps=0.1))
    ctx.x_adv = run_attack(ctx)
    assert (ctx.x_adv - ctx.x).abs().max() <= 0.1 + 1e-6 and not ctx.x_adv.requires_grad
    assert [t.name for t in loss_terms(ctx)] == ["ce_adv"]
    terms = run_step(host, ["fast-at", "igdm"], teacher=tiny_model(seed=1), config=options(host, igdm_alpha=1.0))
    assert {t.name for t in terms} == {"ce_adv", "igdm"}
    with pytest.raises(Exception, match="igdm has no default α for base method 'fast-at'"):
        step_context(host, ["fast-at", "igdm"], teacher=tiny_model(seed=1))
