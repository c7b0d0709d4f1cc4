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
    ("rows: [natural]\ncolour: blue", "colour: unknown key; a study file has name, train, rows"),
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
