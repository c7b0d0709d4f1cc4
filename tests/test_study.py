"""``robustdistill study`` on real Optuna storages and real ``train``/``eval`` commands on the synthetic dataset:
a grid with two workers runs each trial once and its table matches the runs' own records; a killed worker's
trial is resumed exactly; a search tries its first values first and prunes, saying why; bad study files are
one-line errors."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._command_config import StudyConfig
from robustdistill._study.trials import read_metrics

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples" / "studies"
GRID = EXAMPLES / "synthetic-grid.yaml"
SMALL = ["--set", "dataset=synthetic", "--set", "batch-size=16", "--set", "val-split=32", "--set",
         "val-attack-steps=1", "--objective", "val_clean"]


def trials_of(out, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


def epochs_of(run_dir):
    return read_metrics(run_dir)


def commands_in(run_dir):
    return [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("$ ")]


def test_study_help_needs_no_plugins_and_shows_the_options():
    proc = subprocess.run([sys.executable, "-m", "robustdistill", "study", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--file", "--storage", "--workers", "--heartbeat", "--search", "--first", "--prune", "--control"):
        assert flag in proc.stdout, flag


def test_without_optuna_the_error_is_one_line_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['optuna'] = None; from robustdistill._cli import main; "
            f"sys.exit(main(['study', '--file', {str(GRID)!r}, '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "robustdistill: error: robustdistill study needs Optuna: pip install 'robustdistill[study]'"]


BAD = [
    ("rows: [natural, nope]", "rows[1].plugins: unknown method 'nope'"),
    ("rows: [natural]\nobjective: {metric: test_pgd}", "objective.metric: 'test_pgd' is not a validation metric"),
    ("rows: [natural]\ntrain: {seed: 3}", "train.seed: a study sets it; list the seeds under seeds"),
    ("rows: [natural]\ntrain: {bogus: 1}", "train: unknown option 'bogus'"),
    ("rows: [natural]\ntrain: {lr: fast}", "train: lr: 'fast' is not a number"),
    ("rows: [natural]\ntrain: {val-split: 0}", "train.val-split: 0 holds nothing out"),
    ("rows: [natural]\nsearch: {options: {lr: {low: 1, high: 0.1}}}", "search.options.lr: needs low < high"),
    ("rows: [natural]\nsearch: {options: {dataset: {low: 1, high: 2}}}", "search.options.dataset: only number"),
    ("rows: [natural]\nsearch: {options: {lr: {low: 0.01, high: 0.1}}, first: [{lr: 5}]}",
     "search.first[0].lr: 5 must be a number in [0.01, 0.1]"),
    ("rows: [natural]\ngrid: {lr: [0.1]}\nsearch: {options: {lr: {low: 0.01, high: 0.1}}}",
     "search.options.lr: is also listed under grid"),
    ("rows: [natural]\nseeds: [0, 0]", "seeds: list each seed once"),
    ("rows: [natural]\ncontrols: {natural: at}", "controls.natural: 'at' is not a row"),
    ("rows: [natural]\nevaluate: {options: {json: x.json}}", "evaluate.options.json: a study sets it"),
    ("rows: [natural]\nteachers: {t: {plugins: [nope]}}", "teachers.t.plugins: unknown method 'nope'"),
    ("rows: [natural]\nteachers: {t: {plugins: [at], options: {teacher: x}}}",
     "teachers.t.options.teacher: a study's teacher trains without a teacher"),
    ("rows: [natural]\nteachers: {t: {plugins: [at], options: {out: x}}}", "teachers.t.options.out: a study sets it"),
    ("rows: [natural]\nevaluate: [{attacks: clean}, {attacks: pgd20}]",
     "evaluate[1].name: give each evaluation after the first a file name"),
    ("rows: [natural]\nevaluate: [{attacks: clean}, {name: eval, attacks: pgd20}]",
     "evaluate: two evaluations are named eval"),
    ("rows: [natural]\nsearch: {options: {lr: {low: 0.01, high: 0.1}}, first: [{row: at, lr: 0.05}]}",
     "search.first[0].row: 'at' is not a row"),
    ("rows: [natural]\ncolour: blue", "colour: unknown key; a study file has name, train, teachers, rows"),
    ("train: {epochs: 1}", "rows: missing"),
    ("rows: [natural\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[message.split(":")[0] for _, message in BAD])
def test_bad_study_files_are_one_line_errors_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["study", "--file", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "study.db").exists(), "nothing is made of a bad study"


def test_the_example_study_files_load_with_their_slots_and_first_values():
    from robustdistill._manager import load_plugins
    from robustdistill._study.command import read_spec
    from robustdistill._study.spec import slot_key

    registry = load_plugins().registry
    spec = read_spec(StudyConfig(file=str(EXAMPLES / "igdm-alpha.yaml")), registry)
    slots = spec.slots()
    assert len(slots) == 2 * 3 * 6 and len({slot_key(c, k) for c, k in slots}) == len(slots)
    assert [k for _, k in slots[:12]] == [0] * 6 + [1] * 6 and spec.first == ({"igdm-alpha": 20}, {"igdm-alpha": 50})
    assert spec.objective.metric == "val_pgd" and spec.pruning.min_epochs == 16
    grid = read_spec(StudyConfig(file=str(GRID), set=("epochs=5",), seeds="3"), registry)
    assert grid.train["epochs"] == "5" and grid.seeds == (3,) and [r.name for r in grid.rows] == ["natural", "at"]


def test_the_rounds_study_files_load_with_their_teacher_and_two_evaluations():
    from robustdistill._manager import load_plugins
    from robustdistill._study.command import read_spec
    from robustdistill._study.trials import trial_command

    registry = load_plugins().registry
    spec = read_spec(StudyConfig(file=str(EXAMPLES / "round2-fmnist.yaml")), registry)
    assert [t.name for t in spec.teachers] == ["teacher-at"] and spec.teachers[0].options == {"epochs": 4}
    assert [(e.name, e.attacks, e.subset) for e in spec.evaluate] == [
        ("eval", "clean,pgd20,cw", None), ("apgd1000", "clean,apgd-ce+apgd-t", 1000)]
    assert len(spec.slots()) == 9 * 3 and dict(spec.controls)["ard+igdm"] == "ard-igdm-base"
    rows = {row.name: row for row in spec.rows}
    assert rows["ard-igdm-base"].plugins == ("ard",) and rows["ard-igdm-base"].options["ard-tau"] == 1
    assert "--teacher" not in trial_command(spec, spec.cells()[0], {}).argv, "the at row distils from no teacher"
    round1 = read_spec(StudyConfig(file=str(EXAMPLES / "round1-fmnist.yaml")), registry)
    assert [t.name for t in round1.teachers] == ["teacher-at", "teacher-trades"] and len(round1.slots()) == 15
    assert round1.evaluate[0].subset == 1000 and round1.evaluate[0].attacks == "clean,fgsm,pgd20,cw"
    alpha = read_spec(StudyConfig(file=str(EXAMPLES / "round3-fmnist-alpha.yaml")), registry)
    assert [t.name for t in alpha.teachers] == ["teacher-smallcnn", "at-cnn"] and len(alpha.slots()) == 4 * 6
    firsts = {cell.row.name: alpha.first_for(cell) for cell in alpha.cells()}
    assert firsts == {"ard+igdm": [{"igdm-alpha": 5}], "adaad+igdm": [{"igdm-alpha": 5}],
                      "rslad+igdm": [{"igdm-alpha": 0.9}], "iad+igdm": [{"igdm-alpha": 50}]}, "each base its own α"
    controls = read_spec(StudyConfig(file=str(EXAMPLES / "round2-fmnist-controls.yaml")), registry)
    assert controls.seeds == (0, 1, 2, 3, 4) and controls.teachers == spec.teachers
    # a seed's rows come before the next seed's: a study stopped early holds pairs
    assert [c.key for c, _ in controls.slots()[:5]] == ["ard+igdm seed=0", "ard-igdm-base seed=0",
                                                        "adaad+igdm seed=0", "adaad-igdm-base seed=0",
                                                        "ard+igdm seed=1"]
    # the command line's attacks replace the first evaluation's, the others stay
    changed = read_spec(StudyConfig(file=str(EXAMPLES / "round2-fmnist.yaml"), attacks="clean"), registry)
    assert [(e.name, e.attacks) for e in changed.evaluate] == [("eval", "clean"), ("apgd1000", "clean,apgd-ce+apgd-t")]


def test_a_trial_names_its_study_teacher_by_run_directory_hashed_independently_of_the_study_folder(tmp_path):
    from robustdistill._manager import load_plugins
    from robustdistill._study.command import read_spec
    from robustdistill._study.trials import teacher_command, trial_command

    spec = read_spec(StudyConfig(file=str(EXAMPLES / "round2-fmnist.yaml")), load_plugins().registry)
    teacher = teacher_command(spec, spec.teachers[0])
    assert teacher.argv[:2] == ["--plugin", "at"] and "--teacher" not in teacher.argv
    assert teacher.options["epochs"] == 4 and teacher.options["model"] == "cnn"
    teacher_dir = teacher.run_dir(tmp_path)
    assert teacher_dir.parent == tmp_path / "teachers"
    cell = next(c for c, _ in spec.slots() if c.key == "ard+igdm seed=1")
    command = trial_command(spec, cell, {})
    assert command.argv[command.argv.index("--teacher") + 1] == f"teachers/{teacher_dir.name}"
    for out in (tmp_path / "a", tmp_path / "b"):
        train = command.train(out)
        assert train[train.index("--teacher") + 1] == str(out / "teachers" / teacher_dir.name)
        assert command.run_dir(out) == out / "trials" / f"ard+igdm-{command.digest}"


def test_paired_differences_carry_their_95_percent_t_interval():
    from robustdistill._study.table import _cell, stats

    two = stats([0.01, 0.03])
    assert two["mean"] == pytest.approx(0.02) and two["n"] == 2
    assert two["ci95"] == pytest.approx(12.706 * statistics.stdev([0.01, 0.03]) / 2 ** 0.5)
    five = stats([0.01, 0.02, 0.03, 0.04, 0.05])
    assert five["ci95"] == pytest.approx(2.776 * statistics.stdev([0.01, 0.02, 0.03, 0.04, 0.05]) / 5 ** 0.5)
    assert stats([0.5])["ci95"] is None and stats([0.1] * 40)["ci95"] == 0.0
    low, high = 100 * (0.03 - five["ci95"]), 100 * (0.03 + five["ci95"])
    assert _cell(five, interval=True) == f"3.00 ± 1.58 (5) [{low:.2f}, {high:.2f}]"
    assert _cell(five) == "3.00 ± 1.58 (5)"


@pytest.mark.slow
def test_a_grid_study_with_two_workers_runs_each_trial_once_and_tabulates_the_runs_records(tmp_path, capfd):
    out = tmp_path / "study"
    assert main(["study", "--file", str(GRID), "--out", str(out), "--workers", "2", "--progress-every", "5"]) == 0
    log = capfd.readouterr().out
    assert "study synthetic-grid: 4/4 done (0 pruned), 0 running, 0 left · best val_clean (last)" in log
    trials = trials_of(out, "synthetic-grid")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.user_attrs["cell"] for t in trials) == ["at seed=0", "at seed=1", "natural seed=0",
                                                            "natural seed=1"]
    run_dirs = {t.user_attrs["cell"]: out / t.user_attrs["run_dir"] for t in trials}
    assert len(set(run_dirs.values())) == 4 and len(list((out / "trials").iterdir())) == 4
    for cell, run_dir in run_dirs.items():
        assert len(commands_in(run_dir)) == 1, f"{cell} was trained once"
        assert [e["epoch"] for e in epochs_of(run_dir)] == [1, 2]
        assert json.loads((run_dir / "config.json").read_text())["seed"] == int(cell[-1])

    def record(cell):
        run_dir = run_dirs[cell]
        evaluation = json.loads((run_dir / "eval.json").read_text())
        assert evaluation["n"] == 32
        return {"val_clean (last)": epochs_of(run_dir)[-1]["val_clean"], "test clean": evaluation["clean"],
                "test pgd20": evaluation["pgd20"]}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"slots": 4, "done": 4, "complete": 4, "pruned": 0, "running": 0, "failed": 0,
                                 "left": 0}
    groups = {g["row"]: g for g in summary["groups"]}
    text = (out / "summary.md").read_text()
    for row in ("natural", "at"):
        records = [record(f"{row} seed={seed}") for seed in (0, 1)]
        for column in summary["columns"]:
            values = [r[column] for r in records]
            cell = groups[row]["values"][column]
            assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.fmean(values))
            assert cell["sd"] == pytest.approx(statistics.stdev(values))
        means = " | ".join(f"{100 * statistics.fmean([r[c] for r in records]):.2f} ± "
                           f"{100 * statistics.stdev([r[c] for r in records]):.2f} (2)" for c in summary["columns"])
        assert f"| {row} | {means} |" in text
    (diff,) = summary["differences"]
    assert (diff["row"], diff["control"]) == ("at", "natural")
    for column in summary["columns"]:
        per_seed = [record(f"at seed={s}")[column] - record(f"natural seed={s}")[column] for s in (0, 1)]
        assert list(diff["values"][column]["per_seed"].values()) == pytest.approx(per_seed)
        assert diff["values"][column]["n"] == 2

    # the report of the best trial of each cell, each under its cell's name
    report = (out / "report" / "results.md").read_text()
    assert (out / "report" / "curves.png").is_file() and "gradients.png" not in report
    for row in ("natural", "at"):
        link = out / "report" / "runs" / row
        best = max((t for t in trials if t.user_attrs["cell"].startswith(f"{row} ")), key=lambda t: t.value)
        assert link.resolve() == (out / best.user_attrs["run_dir"]).resolve()
        assert f"| {row} | {row} |" in report

    # the same command again continues the finished study: nothing is trained or added
    assert main(["study", "--file", str(GRID), "--out", str(out), "--workers", "2"]) == 0
    assert len(trials_of(out, "synthetic-grid")) == 4
    assert all(len(commands_in(run_dir)) == 1 for run_dir in run_dirs.values())


@pytest.mark.slow
def test_a_killed_worker_leaves_its_trial_to_be_resumed_exactly_and_none_is_lost_or_doubled(tmp_path):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "robustdistill", "study", "--name", "kill", "--out", str(out), "--row", "natural",
               "--seeds", "0,1", *SMALL, "--set", "epochs=8", "--heartbeat", "1", "--workers", "1"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    killed = None
    while killed is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        for run_dir in (out / "trials").glob("natural-*") if (out / "trials").exists() else []:
            if (run_dir / "metrics.jsonl").exists() and 1 <= len(epochs_of(run_dir)) < 6:
                killed = run_dir
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker, its process and its train child, mid-trial
    proc.wait()
    assert len(epochs_of(killed)) < 8

    assert subprocess.run(command, capture_output=True, timeout=600, check=False).returncode == 0
    trials = trials_of(out, "kill")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(t.user_attrs["slot"] for t in complete) == ["natural seed=0 #0", "natural seed=1 #0"]
    assert len(failed) == 1 and len(trials) == 3, "the killed trial failed once and its copy completed"
    (retried,) = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert out / retried.user_attrs["run_dir"] == killed
    assert len(commands_in(killed)) == 2 and "holds no checkpoint" not in (killed / "train.log").read_text().split(
        "$ ")[2], "the relaunch resumed the checkpoint"
    assert [e["epoch"] for e in epochs_of(killed)] == list(range(1, 9))

    unbroken = tmp_path / "unbroken"
    argv = retried.user_attrs["command"].split()[2:]
    argv[argv.index("--out") + 1] = str(unbroken)
    assert main(["train", *argv]) == 0
    a, b = load_checkpoint(killed / "last.pt"), load_checkpoint(unbroken / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.mark.slow
def test_a_search_tries_its_first_values_first_and_prunes_recording_why(tmp_path, capfd):
    out = tmp_path / "study"
    assert main(["study", "--name", "search", "--out", str(out), "--row", "natural", *SMALL, "--set", "epochs=2",
                 "--set", "lr-schedule=constant", "--search", "lr=0.00001:0.1:log", "--first", "lr=0.05", "--first",
                 "lr=0.00001", "--trials", "3",
                 "--prune"]) == 0
    trials = trials_of(out, "search")
    assert len(trials) == 3 and [t.params["lr"] for t in trials[:2]] == [0.05, 0.00001]
    assert 0.00001 <= trials[2].params["lr"] <= 0.1
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    pruned = trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.user_attrs["pruned"].startswith("pruned after epoch 1: val_clean")
    assert "successive halving" in pruned.user_attrs["pruned"]
    assert pruned.intermediate_values[1] < trials[0].intermediate_values[1]
    assert f"trial 1 {pruned.user_attrs['pruned']}" in capfd.readouterr().out, "the worker says why"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["pruned"] >= 1 and summary["trials"]["done"] == 3
    assert all("lr" in group["options"] for group in summary["groups"])


def slurm_args(folder):
    return ["--slurm", "--slurm-cluster", "local", "--slurm-gpus-per-task", "0", "--slurm-time", "10",
            "--slurm-folder", str(folder)]


def test_without_submitit_slurm_is_a_one_line_error_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['submitit'] = None; from robustdistill._cli import main; "
            f"sys.exit(main(['study', '--file', {str(GRID)!r}, '--out', {str(tmp_path)!r}, '--slurm']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "robustdistill: error: robustdistill study --slurm needs submitit: pip install 'robustdistill[study]'"]


@pytest.mark.slow
def test_a_grid_submitted_with_slurm_runs_each_trial_once_in_the_jobs_and_tabulates_them(tmp_path, capfd):
    out, folder = tmp_path / "study", tmp_path / "jobs"
    assert main(["study", "--name", "slurm", "--out", str(out), "--row", "natural", "--seeds", "0,1", *SMALL, "--set",
                 "epochs=2", "--workers", "2", "--progress-every", "5", *slurm_args(folder)]) == 0
    assert "2 worker(s) submitted as job(s)" in capfd.readouterr().out
    trials = trials_of(out, "slurm")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    run_dirs = {t.user_attrs["cell"]: out / t.user_attrs["run_dir"] for t in trials}
    assert sorted(run_dirs) == ["natural seed=0", "natural seed=1"] and len(list((out / "trials").iterdir())) == 2
    logs = "".join(path.read_text() for path in folder.glob("*_log.out"))
    for cell, run_dir in run_dirs.items():
        assert len(commands_in(run_dir)) == 1 and f"({cell}) → {run_dir}" in logs, f"{cell} ran once, in a job"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["done"] == 2 and summary["trials"]["failed"] == 0
    (group,) = summary["groups"]
    values = [epochs_of(run_dir)[-1]["val_clean"] for run_dir in run_dirs.values()]
    cell = group["values"]["val_clean (last)"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.fmean(values))
    assert cell["sd"] == pytest.approx(statistics.stdev(values))


def job_processes(folder):
    """The pids of the running submitit tasks whose jobs live in ``folder``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and str(folder).encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_the_time_limit_signal_stops_the_trial_at_its_checkpoint_and_the_requeued_job_resumes_it(tmp_path):
    out, folder = tmp_path / "study", tmp_path / "jobs"
    command = [sys.executable, "-m", "robustdistill", "study", "--name", "limit", "--out", str(out), "--row",
               "natural", "--seeds", "0", *SMALL, "--set", "epochs=8", "--workers", "1", *slurm_args(folder)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    signalled = None
    while signalled is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
        for run_dir in (out / "trials").glob("natural-*") if (out / "trials").exists() else []:
            if 1 <= len(epochs_of(run_dir)) < 6:
                (pid,) = job_processes(folder)
                os.kill(pid, signal.SIGUSR2)  # what SLURM sends before the time limit
                signalled = run_dir
        time.sleep(0.1)
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, log[-2000:]
    trials = trials_of(out, "limit")
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[0].user_attrs["failed"] == "stopped by a signal; queued again"
    assert trials[1].system_attrs.get("failed_trial") == 0 and out / trials[1].user_attrs["run_dir"] == signalled
    segments = (signalled / "train.log").read_text().split("$ ")[1:]
    assert len(segments) == 2 and "stopped by SIGINT" in segments[0] and "holds no checkpoint" not in segments[1]
    assert [e["epoch"] for e in epochs_of(signalled)] == list(range(1, 9)), "resumed, no epoch done twice"
    (job_log,) = [path.read_text() for path in folder.glob("*_log.out")]
    assert job_log.index("worker 0: trial 0 stopped; its checkpoint is kept") < job_log.index("Requeued job")
    assert "worker 0: trial 1 done" in job_log.split("Requeued job")[1], "the requeued job ran the trial's copy"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["done"] == 1 and summary["trials"]["failed"] == 0


TAUGHT = """name: taught
train: {dataset: synthetic, batch-size: 16, val-split: 32, val-attack-steps: 1, epochs: 2, teacher: teacher-at}
teachers:
  teacher-at: {plugins: [at], options: {epochs: 1}}
rows: [rslad, rslad+igdm]
seeds: [0]
objective: {metric: val_clean}
evaluate:
  - attacks: clean
  - name: fgsm16
    attacks: clean,fgsm
    subset: 16
controls: {rslad+igdm: rslad}
"""


@pytest.mark.slow
def test_two_study_commands_on_one_journal_file_share_the_teacher_and_run_each_trial_once(tmp_path):
    """The multi-machine path on one machine: two separate commands on one journal storage; the study's teacher is
    trained by one of them before any trial, each trial runs once, and --results gets the runs' small files."""
    (tmp_path / "taught.yaml").write_text(TAUGHT)
    command = [sys.executable, "-m", "robustdistill", "study", "--file", "taught.yaml", "--out", "study", "--storage",
               "study/journal.log", "--workers", "1"]
    first = subprocess.Popen([*command, "--results", "results"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    second = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    logs = [proc.communicate(timeout=900)[0].decode() for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], logs
    out = tmp_path / "study"
    (teacher,) = (out / "teachers").iterdir()
    assert [e["epoch"] for e in epochs_of(teacher)] == [1], "the teacher was trained once"
    assert {"eval.json", "fgsm16.json"} <= {p.name for p in teacher.iterdir()}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="taught", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.user_attrs["cell"] for t in trials) == ["rslad seed=0", "rslad+igdm seed=0"]
    for trial in trials:
        run_dir = out / trial.user_attrs["run_dir"]
        assert len(commands_in(run_dir)) == 1, "each trial ran once, in one of the two commands"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["teacher"] == [str(teacher.resolve())]
        assert json.loads((run_dir / "fgsm16.json").read_text())["n"] == 16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["columns"] == ["val_clean (last)", "test clean", "fgsm16 clean", "fgsm16 fgsm"]
    teacher_eval = json.loads((teacher / "fgsm16.json").read_text())
    assert summary["teachers"]["teacher-at"]["fgsm16 fgsm"] == teacher_eval["fgsm"]
    assert "| teacher-at |" in (out / "summary.md").read_text()
    (diff,) = summary["differences"]
    assert diff["values"]["test clean"]["n"] == 1 and diff["values"]["test clean"]["ci95"] is None
    results = tmp_path / "results"
    assert (results / "summary.md").read_text() == (out / "summary.md").read_text()
    assert sorted(p.name for p in (results / "teacher-at").iterdir()) == [
        "config.json", "environment.json", "eval.json", "fgsm16.json", "metrics.jsonl"]
    for row in ("rslad", "rslad+igdm"):
        copied = results / row / "seed-0"
        assert {"config.json", "metrics.jsonl", "eval.json", "fgsm16.json"} <= {p.name for p in copied.iterdir()}
        text = (copied / "config.json").read_text()
        assert str(tmp_path) not in text, "paths relative to the command's directory"
        assert json.loads(text)["teacher"] == [f"study/teachers/{teacher.name}"]


def test_a_rows_first_values_are_queued_first_in_its_cells_only():
    from robustdistill._command_config import EvalConfig
    from robustdistill._config import RunConfig, option_table
    from robustdistill._manager import load_plugins
    from robustdistill._study.spec import build_spec
    from robustdistill._study.storage import open_study

    registry = load_plugins().registry
    spec = build_spec({"rows": ["natural", "at"], "search": {"trials": 2, "options": {"lr": {"low": 0.01, "high": 1}},
                                                             "first": [{"row": "at", "lr": 0.5}, {"lr": 0.1}]}},
                      "study", "s", option_table(RunConfig, registry.options), option_table(EvalConfig),
                      sorted(registry.methods))
    study = open_study(spec, optuna.storages.InMemoryStorage())
    queued = {t.user_attrs["slot"]: t.system_attrs.get("fixed_params") for t in study.get_trials()}
    assert queued == {"natural seed=0 #0": {"lr": 0.1}, "at seed=0 #0": {"lr": 0.5},
                      "natural seed=0 #1": {}, "at seed=0 #1": {"lr": 0.1}}
