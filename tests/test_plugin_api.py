"""Plugin API 2.0: named teachers, checkpointed plugin state, attack iterates, per-sample terms, declared
compositions, the public boundary, the author kit and the held-out validation split."""
from __future__ import annotations

import ast
import gc
import json
import tempfile
import warnings
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError, hookimpl
from robustdistill.api import (API_VERSION, Attack, AttackIterate, Composition, DatasetEntry, Default, EvalAttack,
                               LossTerm, Method, ModelEntry, Option, perturb, ce_objective, model_mode)
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._data import DATASET_INFOS
from robustdistill.testing import (attack, loss_terms, options, plugin_host, resolution, run_step, step_context,
                                   train_config, train_run)

ROOT = Path(__file__).parent.parent
SYNTHETIC = DATASET_INFOS["synthetic"]


# -- several teachers ----------------------------------------------------------------------------------

class TwoTeachers:
    """A base method distilling from a robust teacher on x′ and a clean one on x (MTARD's shape)."""

    @hookimpl
    def register_methods(self, register):
        register(Method(name="two", summary="two teachers", teachers=("robust", "clean"), attack="ce"))

    @hookimpl
    def attack(self, ctx):
        return ctx.perturb(ctx.attack_objective(), init="uniform", bn="eval")

    @hookimpl
    def student_inputs(self, ctx):
        return {"adv": ctx.x_adv, "clean": ctx.x}

    @hookimpl
    def loss(self, ctx):
        robust = ctx.teacher_out("adv", ctx.x_adv, teacher="robust").logits
        clean = ctx.teacher_out("clean", ctx.x, teacher="clean").logits
        return [LossTerm("robust", F.kl_div(F.log_softmax(ctx.student_out("adv"), 1), F.softmax(robust, 1),
                                            reduction="batchmean")),
                LossTerm("clean", F.kl_div(F.log_softmax(ctx.student_out("clean"), 1), F.softmax(clean, 1),
                                           reduction="batchmean"))]


def teacher_run(tmp_path, name, seed):
    host = plugin_host()
    out = tmp_path / name
    train_run(host, ["natural"], out, "--seed", str(seed))
    return out


def test_teachers_by_role_each_forward_its_own_inputs_and_the_run_records_them(tmp_path):
    robust, clean = teacher_run(tmp_path, "robust", 1), teacher_run(tmp_path, "clean", 2)
    host = plugin_host(TwoTeachers(), names=["two"])
    run = train_run(host, ["two"], tmp_path / "run", "--teacher", f"robust={robust}", "--teacher", f"clean={clean}")
    assert set(run.view.teachers) == {"robust", "clean"} and run.view.default_teacher == "robust"
    assert run.view.teacher is run.view.teachers["robust"], "the default is the base's first role"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"] == [f"robust={robust}", f"clean={clean}"]
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["teachers"]["robust"]["spec"] == str(robust)
    assert environment["teachers"]["clean"]["spec"] == str(clean)
    # the two roles are different networks, and each term reads its own
    x = run.view.data.train_x[:4].float() / 255
    with torch.no_grad():
        assert not torch.equal(run.view.teachers["robust"](x), run.view.teachers["clean"](x))


def test_a_missing_or_unknown_teacher_role_is_named(tmp_path):
    host = plugin_host(TwoTeachers(), names=["two"])
    with pytest.raises(RobustDistillError, match="plugin 'two' distils from the teachers robust and clean: pass "
                                                 "--teacher clean=SPEC"):
        train_run(host, ["two"], tmp_path / "a", "--teacher", "robust=x")
    with pytest.raises(RobustDistillError, match="no selected method distils from a teacher 'clen'"):
        train_run(host, ["two"], tmp_path / "b", "--teacher", "robust=x", "--teacher", "clean=y", "--teacher",
                  "clen=z")
    with pytest.raises(RobustDistillError, match="--teacher-arch clean=...: the run has no teacher 'clean'"):
        train_run(plugin_host(), ["ard"], tmp_path / "c", "--teacher", "x", "--teacher-arch", "clean=cnn")
    with pytest.raises(RobustDistillError, match="--teacher is given twice for the teacher 'robust'"):
        train_run(host, ["two"], tmp_path / "d", "--teacher", "robust=x", "--teacher", "robust=y")
    assert not any((tmp_path / n).exists() for n in "abcd"), "refused before anything is written"


def test_per_teacher_architecture_options_apply_to_their_role(tmp_path):
    from robustdistill._models import build_model
    from robustdistill._registry import ModelArch

    arch = ModelArch("cnn", 10, 1, 8)
    state = {k: v for k, v in build_model(arch).state_dict().items() if k not in ("mean", "std")}
    torch.save(state, tmp_path / "plain.pt")
    robust = teacher_run(tmp_path, "robust", 1)
    host = plugin_host(TwoTeachers(), names=["two"])
    run = train_run(host, ["two"], tmp_path / "run", "--teacher", f"robust={robust}", "--teacher",
                    f"clean={tmp_path / 'plain.pt'}", "--teacher-arch", "clean=cnn",
                    "--teacher-normalize", "clean=none")
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["teachers"]["clean"]["arch"] == "cnn"
    assert "recorded in the checkpoint" in environment["teachers"]["robust"]["normalization"]
    assert run.view.epoch == 1


def test_a_third_party_teacher_forward_sees_the_role():
    seen = []

    class Spy:
        @hookimpl
        def teacher_forward(self, role):
            seen.append(role)

    host = plugin_host(TwoTeachers(), Spy(), names=["two", "spy"])
    run_step(host, ["two"])
    assert sorted(seen) == ["clean", "robust"]


# -- checkpointed state ------------------------------------------------------------------------------

class Counter:
    """Counts its steps and the samples per class in checkpointed state."""

    @hookimpl
    def register_methods(self, register):
        register(Method(name="counter", summary="counts", default_base="at"))

    @hookimpl
    def train_start(self, run):
        run.checkpointed.setdefault("counter", {"steps": 0, "per_class": torch.zeros(10), "note": ("a", 1.5, None)})

    @hookimpl
    def step_end(self, run, ctx):
        state = run.checkpointed["counter"]
        state["steps"] += 1
        state["per_class"] += torch.bincount(ctx.y, minlength=10).float()


def test_checkpointed_state_is_saved_and_restored_before_train_start(tmp_path):
    host = plugin_host(Counter(), names=["counter"])
    unbroken = train_run(host, ["counter"], tmp_path / "unbroken", "--epochs", "2")
    train_run(host, ["counter"], tmp_path / "resumed", "--epochs", "1")
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["checkpointed"]["counter"]
    assert saved["steps"] == 4 and saved["per_class"].sum() == 224 and saved["note"] == ("a", 1.5, None)
    resumed = train_run(host, ["counter"], tmp_path / "resumed", "--epochs", "2", resume=True)
    assert resumed.view.checkpointed["counter"]["steps"] == 8
    assert torch.equal(resumed.view.checkpointed["counter"]["per_class"],
                       unbroken.view.checkpointed["counter"]["per_class"])


def test_state_a_checkpoint_cannot_hold_is_refused_by_name(tmp_path):
    class Bad:
        @hookimpl
        def register_methods(self, register):
            register(Method(name="counter", summary="keeps a module in its state", default_base="at"))

        @hookimpl
        def train_start(self, run):
            run.checkpointed["counter"] = {"model": torch.nn.Linear(2, 2)}

    host = plugin_host(Bad(), names=["counter"])
    with pytest.raises(RobustDistillError, match=r"run.checkpointed: 'counter'\['model'\] is a Linear.*run.add_module"):
        train_run(host, ["counter"], tmp_path / "run")


# -- attack iterates --------------------------------------------------------------------------------

class Watcher:
    def __init__(self):
        self.seen: list[AttackIterate] = []

    @hookimpl
    def train_start(self, run):
        run.observe_attack(lambda ctx, iterate: self.seen.append(iterate))


def test_observers_see_every_iterate_with_the_attacks_own_logits_and_change_nothing():
    host = plugin_host()
    torch.manual_seed(0)
    ctx = step_context(host, ["ard"], config=options(host, attack_steps=4))
    plain = attack(ctx)
    watcher = Watcher()
    host = plugin_host(watcher, names=["watcher"])
    torch.manual_seed(0)
    ctx = step_context(host, ["ard"], config=options(host, attack_steps=4))
    observed = attack(ctx)
    assert torch.equal(plain, observed), "observing changes no iterate"
    assert [it.index for it in watcher.seen] == [0, 1, 2, 3]
    last = watcher.seen[-1]
    assert not last.logits.requires_grad and not last.x_adv.requires_grad
    with model_mode(ctx.student, train=True), torch.no_grad():  # ARD attacks with train-mode BatchNorm
        torch.testing.assert_close(ctx.attack_student(last.x_adv), last.logits)
    # the first iterate is the start point: within ε of x
    assert (watcher.seen[0].x_adv - ctx.x).abs().max() <= ctx.config.eps + 1e-6


def test_attacks_outside_ctx_perturb_are_not_observed():
    watcher = Watcher()
    host = plugin_host(watcher, names=["watcher"])
    ctx = step_context(host, ["natural"])
    with model_mode(ctx.student, train=False):
        perturb(ce_objective(ctx.student, ctx.y), ctx.x, eps=0.1, step_size=0.02, steps=3)
    assert watcher.seen == []


# -- per-sample terms and re-weighting ------------------------------------------------------------------

@pytest.mark.parametrize("methods", [["natural"], ["at"], ["trades"], ["ard"], ["rslad"], ["adaad"], ["at", "igdm"]])
def test_every_base_and_igdm_give_per_sample_values_whose_mean_is_the_term(methods):
    host = plugin_host()
    config = options(host, ard_alpha=0.5, adaad_lambda=0.5, igdm_alpha=1.0)
    ctx = step_context(host, methods, config=config, batch=6)
    attack(ctx)
    for term in loss_terms(ctx):
        samples = term.samples()
        assert samples.shape == (6,), term.name
        torch.testing.assert_close(samples.mean(), term.value.float(), msg=term.name)


class Reweight:
    def __init__(self, names, weights):
        self.names, self.weights = names, weights

    @hookimpl
    def sample_weights(self, ctx, terms):
        return {name: self.weights for name in self.names}


def test_sample_weights_reweight_other_plugins_terms_before_reduction():
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0])
    host = plugin_host(Reweight(["ce_adv"], weights), names=["reweight"])
    ctx = step_context(host, ["at"])
    attack(ctx)
    (term,) = loss_terms(ctx)
    plain = F.cross_entropy(ctx.student_out("adv"), ctx.y, reduction="none")
    torch.testing.assert_close(term.value, (weights * plain).mean())
    torch.testing.assert_close(term.samples(), weights * plain)


def test_weights_of_two_plugins_multiply_and_unweighted_terms_stay_as_returned():
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 0.5, 1.0])
    host = plugin_host(Reweight(["kl_adv"], a), Reweight(["kl_adv"], b), names=["ra", "rb"])
    ctx = step_context(host, ["rslad"])
    attack(ctx)
    terms = {t.name: t for t in loss_terms(ctx)}
    soft = F.softmax(ctx.teacher_out("clean", ctx.x).logits, 1)
    from robustdistill.plugins.rslad import rslad_kl, rslad_kl_elements
    per_sample = rslad_kl_elements(ctx.student_out("adv"), soft).sum(1) / soft.shape[1]
    torch.testing.assert_close(terms["kl_adv"].value, (a * b * per_sample).mean())
    assert torch.equal(terms["kl_clean"].value, rslad_kl(ctx.student_out("clean"), soft, "mean")), "untouched"


def test_reweighting_a_term_without_per_sample_values_or_a_missing_term_is_refused():
    class NoSamples:
        @hookimpl
        def register_methods(self, register):
            register(Method(name="plain", summary="a term without per-sample values"))

        @hookimpl
        def loss(self, ctx):
            return LossTerm("plain", ctx.student(ctx.x).pow(2).mean())

    host = plugin_host(NoSamples(), Reweight(["plain"], torch.ones(4)), names=["plain", "reweight"])
    with pytest.raises(RobustDistillError, match="'plain' carries no per-sample values"):
        loss_terms(step_context(host, ["plain"]))
    host = plugin_host(Reweight(["nope"], torch.ones(4)), names=["reweight"])
    with pytest.raises(RobustDistillError, match=r"does not have: \['nope'\]"):
        loss_terms(step_context(host, ["natural"]))


def test_without_a_reweighting_plugin_the_terms_are_the_ones_returned():
    returned = []

    class Keep:
        @hookimpl
        def register_methods(self, register):
            register(Method(name="keep", summary="keeps its term"))

        @hookimpl
        def loss(self, ctx):
            term = LossTerm("keep", ctx.student(ctx.x).pow(2).mean(), per_sample=lambda: pytest.fail("not asked"))
            returned.append(term)
            return term

    host = plugin_host(Keep(), names=["keep"])
    (term,) = loss_terms(step_context(host, ["keep"]))
    assert term is returned[0]


# -- declared composition -----------------------------------------------------------------------------

def test_igdm_declares_its_bases_and_the_bases_name_no_add_on():
    for path in (ROOT / "plugins").glob("*.py"):
        assert "config.plugin" not in path.read_text(), f"{path.name} tests which methods are selected"
    host = plugin_host()
    info = DATASET_INFOS["cifar10"]
    composed = resolution(host, ["ard", "igdm"], info)
    assert dict(composed.config.ard) == {"tau": 1.0, "alpha": 1.0, "kl_reduction": "batchmean", "attack_bn": "eval",
                                         "init": "uniform"}
    assert composed.sources["ard.tau"]["source"].startswith("igdm: the IGDM code's ARD base")
    assert composed.sources["igdm.alpha"] == {"value": 5.0, "borrowed": False,
                                              "source": "IGDM App. B.2, CIFAR-10 row (ResNet-18 student, LTD teacher)"}
    alone = resolution(host, ["ard"], info)
    assert alone.config.ard.tau == 30.0 and alone.sources["ard.tau"]["source"] == "the ARD code (main.py)"
    assert resolution(host, ["rslad", "igdm"], DATASET_INFOS["cifar100"]).config.rslad.scale == 10.0


class Tempered:
    """A third-party add-on that sets its base's options the way igdm does."""

    def __init__(self, tau):
        self.tau = tau

    @hookimpl
    def register_methods(self, register):
        register(Method(name=f"tempered{int(self.tau)}", summary="sets ARD's τ"))

    @hookimpl
    def register_compositions(self, register):
        register(Composition(addon=f"tempered{int(self.tau)}", base="ard", options={"tau": self.tau},
                             source="a test"))


def test_a_third_party_add_on_declares_its_base_options_and_the_user_still_wins():
    host = plugin_host(Tempered(4.0), names=["tempered4"])
    info = DATASET_INFOS["cifar10"]
    assert resolution(host, ["ard", "tempered4"], info).config.ard.tau == 4.0
    assert resolution(host, ["ard", "tempered4"], info, options(host, ard_tau=2.0)).config.ard.tau == 2.0
    host = plugin_host(Tempered(4.0), Tempered(8.0), names=["tempered4", "tempered8"])
    with pytest.raises(RobustDistillError, match=r"tempered[48] and tempered[48] set ard's option 'tau' differently"):
        resolution(host, ["ard", "tempered4", "tempered8"], info)


def test_a_composition_of_an_option_the_base_lacks_is_a_plugin_error():
    class Wrong(Tempered):
        @hookimpl
        def register_compositions(self, register):
            register(Composition(addon="tempered4", base="ard", options={"temperature": 1.0}, source="typo"))

    host = plugin_host(Wrong(4.0), names=["tempered4"])
    with pytest.raises(RobustDistillError, match="sets 'temperature', which is not an option of plugin 'ard'"):
        resolution(host, ["ard", "tempered4"], DATASET_INFOS["cifar10"])


def test_a_borrowed_default_is_said_once_and_recorded(tmp_path, capsys):
    host = plugin_host()
    train_run(host, ["at", "igdm"], tmp_path / "run", "--teacher", str(teacher_run(tmp_path, "t", 1)))
    out = capsys.readouterr().out
    assert out.count("igdm.alpha = 60.0: IGDM App. B.2, CIFAR-10 row") == 1
    assert "the paper has no synthetic setting, this is the one with 10 classes" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["sources"]["igdm.alpha"]["borrowed"] is True and config["plugins"]["igdm"]["alpha"] == 60.0


# -- the boundary -----------------------------------------------------------------------------------------

def module_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base} | ({f"{base}.{a.name}" for a in node.names} if node.module in (None, "robustdistill")
                               else set())
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_built_in_plugins_import_only_the_public_api(path):
    allowed = {"robustdistill", "robustdistill.api", "robustdistill.hookimpl"}
    for name in module_imports(path):
        if name.startswith("robustdistill"):
            assert name in allowed or name.startswith("robustdistill.api"), f"{path.name} imports {name}"
        if name.startswith("."):
            assert not name.lstrip(".").startswith("_"), f"{path.name} imports the private {name}"


def test_the_package_has_no_import_cycles():
    package = ROOT / "robustdistill"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}

    def resolve(module: str, node: ast.ImportFrom) -> list[str]:
        parts = module.split(".")
        here = parts if modules[module].name == "__init__.py" else parts[:-1]
        base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
        named = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        return named or ([base] if base in modules else [])

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module-level imports: what importing the module imports
            if isinstance(node, ast.ImportFrom) and node.level:
                deps |= set(resolve(module, node))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustdistill"):
                deps |= {node.module} & set(modules)
        graph[module] = deps - {module}

    def visit(node, trail):
        assert node not in trail, f"import cycle: {' → '.join([*trail, node])}"
        for dep in graph.get(node, ()):
            visit(dep, [*trail, node])

    assert "robustdistill._data.files" in graph and "robustdistill._models.foreign" in graph
    for module in graph:
        visit(module, [])


def test_registration_types_take_keywords_only_and_are_frozen():
    for cls in (Method, Option, Attack, EvalAttack, ModelEntry, DatasetEntry, Composition, Default):
        first = fields(cls)[0].name
        with pytest.raises(TypeError):
            cls("positional")
        assert all(f.kw_only for f in fields(cls)), cls.__name__
        with pytest.raises(FrozenInstanceError):
            setattr(cls(**{f.name: None for f in fields(cls) if f.default is f.default_factory}), first, 1)


def test_a_plugin_built_for_a_newer_api_is_warned_about():
    class Newer:
        robustdistill_api = "2.9"

    class Same:
        robustdistill_api = API_VERSION

    with pytest.warns(UserWarning, match="plugin 'newer' was built for plugin API 2.9"):
        plugin_host(Newer(), names=["newer"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugin_host(Same(), names=["same"])


# -- the author kit --------------------------------------------------------------------------------------

def test_the_kit_resolves_with_the_runs_epochs():
    host = plugin_host()
    ctx = step_context(host, ["at", "igdm"], epochs=3, config=options(host, igdm_alpha=1.0))
    assert ctx.config.igdm.ramp_epochs == 3 and ctx.epochs == 3


def test_the_kit_leaves_no_directory_behind(tmp_path):
    host = plugin_host()
    gc.collect()
    before = set(Path(tempfile.gettempdir()).glob("robustdistill-step-*"))
    for _ in range(3):
        step_context(host, ["at"])
    gc.collect()
    assert set(Path(tempfile.gettempdir()).glob("robustdistill-step-*")) <= before
    ctx = step_context(host, ["at"], out=tmp_path / "kept")
    assert ctx.run.out == tmp_path / "kept" and (tmp_path / "kept" / "config.json").exists()


def test_the_kit_runs_the_engines_step(monkeypatch):
    from robustdistill import _loop

    calls = []
    real = _loop.train_step
    monkeypatch.setattr(_loop, "train_step", lambda run, ctx: calls.append(ctx) or real(run, ctx))
    host = plugin_host()
    run_step(host, ["at"])
    assert len(calls) == 1


def test_the_kit_gives_a_tiny_teacher_per_role_when_none_is_passed():
    host = plugin_host(TwoTeachers(), names=["two"])
    ctx = step_context(host, ["two"])
    assert set(ctx.teachers) == {"robust", "clean"} and ctx.teachers["robust"] is not ctx.teachers["clean"]
    assert {t.name for t in run_step(host, ["ard"])} == {"kl"}, "ard without a teacher= gets one"


# -- validation held out from the training images -------------------------------------------------------

def test_validation_is_held_out_from_the_end_of_the_training_set(tmp_path):
    from robustdistill._data import load_synthetic

    full = load_synthetic()
    run = train_run(plugin_host(), ["natural"], tmp_path / "run", "--val-split", "40", "--subset", "100")
    data = run.view.data
    assert torch.equal(data.train_x, full.train_x[:100]), "--subset N trains on the same first N images"
    assert torch.equal(data.val_x, full.train_x[-40:]) and len(data.val_y) == 40
    assert {"val_clean", "val_pgd"} <= set(run.view.history[0]) and "test_pgd" not in run.view.history[0]
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["data"]["validation_images"] == [216, 256]
    run = train_run(plugin_host(), ["natural"], tmp_path / "all", "--val-split", "0", "--val-test", "16")
    assert torch.equal(run.view.data.train_x, full.train_x), "--val-split 0 trains on every image"
    assert "val_pgd" not in run.view.history[0] and {"test_clean", "test_pgd"} <= set(run.view.history[0])


def test_validation_draws_no_random_numbers_from_training(tmp_path):
    a = train_run(plugin_host(), ["at"], tmp_path / "a", "--epochs", "2", "--val-split", "32")
    b = train_run(plugin_host(), ["at"], tmp_path / "b", "--epochs", "2", "--val-split", "32", "--val-test", "64",
                  "--val-attack-steps", "5")
    for x, y in zip(a.student.state_dict().values(), b.student.state_dict().values()):
        assert torch.equal(x, y)


def test_the_default_split_is_at_most_a_tenth_and_overlaps_are_refused(tmp_path):
    host = plugin_host()
    assert resolution(host, ["natural"], SYNTHETIC, train_images=256).config.val_split == 25
    assert resolution(host, ["natural"], SYNTHETIC, train_images=60000).config.val_split == 500
    with pytest.raises(RobustDistillError, match="--subset 250 reaches into the 25 validation images.*--subset 231"):
        resolution(host, ["natural"], SYNTHETIC, train_config(host, "--subset", "250"), train_images=256)
    with pytest.raises(RobustDistillError, match="--val-split 300 holds out every one"):
        resolution(host, ["natural"], SYNTHETIC, train_config(host, "--val-split", "300"), train_images=256)


def test_val_size_says_what_replaced_it(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic", "--val-size", "100", "--out", str(tmp_path / "r")]) == 2
    assert "--val-size was replaced: --val-split N holds out" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("val-size: 100\n")
    assert main(["train", "--dataset", "synthetic", "--config", str(tmp_path / "c.yaml"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "val-size was replaced" in capsys.readouterr().err


def test_resume_refuses_another_split_and_reads_old_runs_as_unsplit(tmp_path):
    host = plugin_host()
    train_run(host, ["natural"], tmp_path / "run", "--val-split", "32")
    with pytest.raises(RobustDistillError, match="--val-split 32 → 16"):
        train_run(host, ["natural"], tmp_path / "run", "--val-split", "16", "--epochs", "2", resume=True)
    from robustdistill._state import _flat

    assert _flat({"teacher": "runs/t"}, host.registry) == {"teacher": ["runs/t"], "val_split": 0, "nesterov": False}
