"""--batch-student-forwards: the declared student inputs of a step go through the student as one batch."""
from __future__ import annotations

import copy

import pytest
import torch

from robustdistill._checkpoint import save_checkpoint
from robustdistill import StepContext
from robustdistill._loop import new_step, start, student_inputs, train_step
from robustdistill._models import build_model
from robustdistill._registry import ModelArch, RobustDistillError
from robustdistill._run import build_run
from robustdistill.testing import attack as run_attack
from robustdistill.testing import plugin_host, train_config

from support import needs_fashion_mnist


def _run(tmp_path, *args: str):
    host = plugin_host()
    arch = ModelArch("cnn", 10, 1, 28, "relu", (0.2860,), (0.3530,))
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "teacher.pt", {"arch": arch.to_dict(), "config": {},
                                              "model": build_model(arch).eval().state_dict()})
    config = train_config(host, *args, "--teacher", str(tmp_path / "teacher.pt"), "--subset", "64",
                          "--out", str(tmp_path / "run"))
    run = build_run(config, host)
    start(run)
    return run


def _context(run) -> StepContext:
    x = run.view.data.train_x[:16].float() / 255
    ctx = new_step(run, x, run.view.data.train_y[:16], 1, 0)
    run.student.train()
    torch.manual_seed(0)
    ctx.x_adv = run_attack(ctx)
    return ctx


@needs_fashion_mnist
def test_declared_inputs_of_composed_plugins_run_as_one_training_mode_batch(tmp_path) -> None:
    run = _run(tmp_path, "--plugin", "rslad", "--plugin", "igdm", "--batch-student-forwards")
    ctx = _context(run)
    inputs = run.hooks.student_inputs(ctx)
    assert list(inputs) == ["adv", "clean", "x-δ"]  # "adv" is declared by both plugins, once
    assert inputs["adv"] is ctx.x_adv and inputs["clean"] is ctx.x
    torch.testing.assert_close(inputs["x-δ"], 2 * ctx.x - ctx.x_adv)
    twin = copy.deepcopy(run.student)
    calls = []
    run.student.register_forward_hook(lambda *_: calls.append(1))
    student_inputs(run, ctx)
    assert len(calls) == 1
    inputs = {key: ctx.student_input(key) for key in inputs}
    # one forward over the concatenation: BatchNorm normalises over all 48 images and updates once
    logits, features = twin(torch.cat(list(inputs.values())), return_features=True)
    for i, key in enumerate(inputs):
        torch.testing.assert_close(ctx.student_out(key, inputs[key]), logits[16 * i:16 * (i + 1)])
        torch.testing.assert_close(ctx.student_out(key, inputs[key], features=True)[1], features[16 * i:16 * (i + 1)])
    assert len(calls) == 1  # the loss's student_out calls are cache hits
    for (name, buf), twin_buf in zip(run.student.named_buffers(), twin.buffers()):
        torch.testing.assert_close(buf, twin_buf, msg=name)


@needs_fashion_mnist
@pytest.mark.parametrize("batched", [False, True])
def test_training_step_student_forwards(tmp_path, batched: bool) -> None:
    args = ["--plugin", "rslad", "--plugin", "igdm"] + (["--batch-student-forwards"] if batched else [])
    run = _run(tmp_path, *args)
    calls = []
    run.student.register_forward_hook(lambda module, inputs, out: calls.append(len(inputs[0])))
    x, y = run.view.data.train_x[:16].float() / 255, run.view.data.train_y[:16]
    loss, terms = train_step(run, new_step(run, x, y, 1, 0))
    assert torch.isfinite(loss) and {t.name for t in terms} == {"kl_adv", "kl_clean", "igdm"}
    assert calls == ([48] if batched else [16, 16, 16])  # the attack calls the folded view, not the student


@needs_fashion_mnist
def test_one_name_for_two_different_tensors_is_refused(tmp_path) -> None:
    from robustdistill import hookimpl

    class Clash:
        @hookimpl
        def student_inputs(self, ctx):
            return {"adv": ctx.x_adv.clone()}

    run = _run(tmp_path, "--plugin", "rslad", "--batch-student-forwards")
    run.host.pm.register(Clash(), name="clash")
    hooks = run.host.step_hooks(run.view.methods)
    ctx = _context(run)
    with pytest.raises(RobustDistillError, match="'adv'.*same tensor"):
        hooks.student_inputs(ctx)
