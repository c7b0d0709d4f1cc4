"""docs/plugins.md is the plugin authors' reference: every hook, argument and view attribute is in it, and
its five worked plugins work as it says."""
import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

from robustdistill import RobustDistillError, RunView, StepContext, api, hookspecs
from robustdistill._checkpoint import load_checkpoint
from robustdistill.testing import (HookRecorder, attack, loss_terms, options, plugin_host, run_step, step_context,
                                   tiny_model, train_run)

DOC = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
HOOKS = [name for name, f in vars(hookspecs).items() if getattr(f, "robustdistill_spec", None) is not None]


def test_every_hook_is_documented_with_its_arguments():
    assert len(HOOKS) == 20
    for name in HOOKS:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({args})`" in DOC, f"{name}({args}) is not documented in docs/plugins.md"
    documented = set(re.findall(r"^### `(\w+)\(", DOC, flags=re.M))
    assert documented == set(HOOKS), "docs/plugins.md documents hooks that do not exist"


def public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")} | {f.name for f in dataclasses.fields(cls)
                                                              if not f.name.startswith("_")}


def test_what_hooks_see_is_documented():
    view = {"config", "data", "dataset", "arch", "device", "student", "attack_student", "teachers", "default_teacher",
            "teacher", "methods", "base_method", "attack", "out", "steps_per_epoch", "is_main", "world_size", "epoch",
            "history", "lr", "state", "checkpointed", "add_module", "build_model", "observe_attack", "set_final_model",
            "reduce_sum", "train_batches", "validate"}
    step = {"x", "y", "x_adv", "delta", "epoch", "epochs", "step", "steps_per_epoch", "epoch_progress", "config",
            "student", "attack_student", "teacher", "teachers", "run", "state", "student_out", "student_input",
            "student_forward", "teacher_out", "teacher_outs", "perturb", "attack_objective", "attack_spec",
            "input_gradient"}
    assert public(RunView) == view, "a new RunView member needs a doc row"
    assert public(StepContext) == step, "a new StepContext member needs a doc row"
    for name in view | step:
        assert f"`{name}" in DOC, f"{name} is not documented in docs/plugins.md"


def test_every_public_name_of_the_api_is_documented():
    for name in api.__all__:
        assert f"`{name}" in DOC, f"robustdistill.api.{name} is not documented in docs/plugins.md"


def test_the_recorder_records_every_hook():
    assert {n for n in dir(HookRecorder) if n in HOOKS} == set(HOOKS)


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
    terms = run_step(host, ["logit-pairing"], config=options(host, logit_pairing_weight=0.0))
    assert [t.name for t in terms] == ["ce_adv"], "the zero-weight rule: no term at weight 0"


def test_the_worked_base_method_attacks_with_one_step_and_composes_with_igdm(capsys):
    plugin = _doc_module("rd_fast_at_doc")
    host = plugin_host(plugin, names=["fast-at"])
    ctx = step_context(host, ["fast-at"], config=options(host, eps=0.1))
    attack(ctx)
    assert (ctx.x_adv - ctx.x).abs().max() <= 0.1 + 1e-6 and not ctx.x_adv.requires_grad
    assert [t.name for t in loss_terms(ctx)] == ["ce_adv"]
    terms = run_step(host, ["fast-at", "igdm"], teacher=tiny_model(seed=1), config=options(host, igdm_alpha=1.0))
    assert {t.name for t in terms} == {"ce_adv", "igdm"}
    with pytest.raises(RobustDistillError, match="igdm has no α for the base method 'fast-at'.*pass --igdm-alpha"):
        step_context(host, ["fast-at", "igdm"], teacher=tiny_model(seed=1))


def test_the_worked_two_teacher_add_on_reads_its_own_teacher():
    plugin = _doc_module("rd_clean_kd_doc")
    host = plugin_host(plugin, names=["clean-kd"])
    robust, clean = tiny_model(seed=1), tiny_model(seed=2)
    ctx = step_context(host, ["ard", "clean-kd"], teachers={"teacher": robust, "clean": clean})
    attack(ctx)
    terms = {t.name: t for t in loss_terms(ctx)}
    with torch.no_grad():
        expected = torch.nn.functional.kl_div(torch.log_softmax(ctx.student(ctx.x), 1), torch.softmax(clean(ctx.x), 1),
                                              reduction="batchmean")
    assert terms["clean_kd"].value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ctx.run.teacher is robust and ctx.teachers["clean"] is clean, "ARD reads the default teacher"
    with pytest.raises(RobustDistillError, match="--teacher clean=SPEC"):
        train_run(host, ["ard", "clean-kd"], "unused", "--teacher", "runs/x")


def test_the_worked_stateful_add_on_resumes_bit_for_bit(tmp_path):
    plugin = _doc_module("rd_adaptive_ce_doc")
    host = plugin_host(plugin, names=["adaptive-ce"])
    unbroken = train_run(host, ["adaptive-ce"], tmp_path / "unbroken", "--epochs", "2")
    train_run(host, ["adaptive-ce"], tmp_path / "resumed", "--epochs", "1")
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["checkpointed"]["adaptive-ce"]
    assert saved["first"] > 0 and saved["weight"] != 1.0, "the state is in the checkpoint"
    resumed = train_run(host, ["adaptive-ce"], tmp_path / "resumed", "--epochs", "2", resume=True)
    assert resumed.view.checkpointed == unbroken.view.checkpointed
    for a, b in zip(resumed.student.state_dict().values(), unbroken.student.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.view.history[-1]["loss"] == unbroken.view.history[-1]["loss"]


def test_the_worked_reweighting_add_on_weights_the_bases_terms_per_class(tmp_path):
    plugin = _doc_module("rd_class_weights_doc")
    host = plugin_host(plugin, names=["class-weights"])
    run = train_run(host, ["class-weights"], tmp_path / "run", "--epochs", "2")
    state = run.view.checkpointed["class-weights"]
    assert state["weights"].shape == (10,) and not torch.allclose(state["weights"], torch.ones(10))
    assert state["weights"].sum().item() == pytest.approx(10, rel=1e-5)
    ctx = step_context(host, ["class-weights"], student=tiny_model(num_classes=10), batch=8)
    weights = torch.arange(1.0, 11.0)
    ctx.run.checkpointed["class-weights"]["weights"] = weights
    attack(ctx)
    (term,) = loss_terms(ctx)
    plain = torch.nn.functional.cross_entropy(ctx.student_out("adv"), ctx.y, reduction="none")
    assert term.value.item() == pytest.approx((weights[ctx.y] * plain).mean().item(), rel=1e-5)
    survived = ctx.state["class-weights"]
    assert survived.shape == (10,) and 0 <= survived.sum().item() <= 8 * ctx.config.attack_steps
