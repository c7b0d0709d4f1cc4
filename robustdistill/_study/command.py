"""The ``robustdistill study`` command: reads the study, makes or continues it in its storage, starts the workers
of this machine (or submits them as a SLURM array job), prints progress while they run, and writes the table at the
end."""
from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from pathlib import Path
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._command_config import EvalConfig, StudyConfig
from .._config import RunConfig, format_duration, option_table, parse_number
from .._registry import Registry, RobustDistillError
from . import storage as store
from .spec import StudySpec, build_spec, pairs, read_study_file, search_range, slot_key
from .storage import INSTALL
from .table import mirror, results, summarize, teacher_results, write_summary
from .trials import worker_env
from .worker import WorkerPlan, visible_gpus, work

if TYPE_CHECKING:
    import optuna

SLURM_POLL = 5.0
"""Seconds between looks at the submitted jobs."""


def _section(values: dict[str, Any], key: str) -> dict[str, Any]:
    """A mapping section of the study file, to add command-line values to (a bad one is left to the checks)."""
    current = values.get(key)
    return dict(current) if isinstance(current, dict) else {}


def study_values(config: StudyConfig) -> dict[str, Any]:
    """The study file's mapping with the command line's additions (the command line wins)."""
    values = read_study_file(config.file) if config.file else {}
    if config.name:
        values["name"] = config.name
    if config.set:
        values["train"] = {**_section(values, "train"), **dict(pairs(config.set, "--set", "epochs=30"))}
    if config.row:
        values["rows"] = list(config.row)
    if config.seeds is not None:
        try:
            values["seeds"] = [int(seed) for seed in config.seeds.split(",") if seed.strip()]
        except ValueError:
            raise RobustDistillError(f"--seeds {config.seeds!r} is not a comma-separated list of whole numbers "
                                     "(e.g. 0,1,2)") from None
    if config.grid:
        values["grid"] = {**_section(values, "grid"),
                          **{key: value.split(",") for key, value in pairs(config.grid, "--grid", "lr=0.05,0.1")}}
    search = _section(values, "search")
    if config.search:
        search["options"] = {**(search.get("options") or {}), **{
            key: search_range(value) for key, value in pairs(config.search, "--search", "igdm-alpha=0.2:220:log")}}
    if config.first:
        search["first"] = [{key: parse_first(value) for key, value in pairs(item.split(","), "--first", "alpha=10")}
                           for item in config.first]
    if config.trials is not None:
        search["trials"] = config.trials
    if search:
        values["search"] = search
    if config.objective:
        metric, _, epoch = config.objective.partition(":")
        values["objective"] = {**_section(values, "objective"), "metric": metric, **({"epoch": epoch} if epoch else {})}
    if config.prune and not values.get("pruning"):
        values["pruning"] = True
    if config.attacks or config.eval_subset:
        given = values.get("evaluate")
        listed = list(given) if isinstance(given, list) and given else None
        evaluate = dict(listed[0]) if listed and isinstance(listed[0], dict) else _section(values, "evaluate")
        evaluate.update({k: v for k, v in (("attacks", config.attacks), ("subset", config.eval_subset)) if v})
        values["evaluate"] = [evaluate, *listed[1:]] if listed else evaluate
    if config.control:
        values["controls"] = {**_section(values, "controls"), **dict(pairs(config.control, "--control",
                                                                           "rslad+igdm=rslad"))}
    return values


def parse_first(text: str) -> float:
    try:
        return parse_number(text)
    except argparse.ArgumentTypeError:
        raise RobustDistillError(f"--first: {text!r} is not a number (e.g. --first igdm-alpha=10)") from None


def read_spec(config: StudyConfig, registry: Registry) -> StudySpec:
    """The study of the file and the command line, checked against the train and eval options."""
    source = f"study file {config.file}" if config.file else "study"
    default = Path(config.file).stem if config.file else "study"
    return build_spec(study_values(config), source, default, option_table(RunConfig, registry.options),
                      option_table(EvalConfig), sorted(registry.methods))


class Progress:
    """Lines that read in a log: trials done / running / left, the best so far, the time left; ``on_done`` gets the
    counts whenever the number of finished trials changes."""

    def __init__(self, spec: StudySpec, workers: int,
                 on_done: Callable[[dict[str, int]], object] = lambda counts: None) -> None:
        self.spec = spec
        self.workers = workers
        self.on_done = on_done
        self.started = time.monotonic()
        self.last: tuple[int, ...] = ()
        self.shown = 0.0

    def counts(self, study: optuna.Study) -> dict[str, int]:
        optuna = store.import_optuna()
        state = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        slots = {slot_key(cell, k) for cell, k in self.spec.slots()}
        by_state = {s: {t.user_attrs.get("slot") for t in trials if t.state == s} & slots for s in state}
        done = by_state[state.COMPLETE] | by_state[state.PRUNED]
        running = by_state[state.RUNNING] - done
        failed = by_state[state.FAIL] - done - running - by_state[state.WAITING]
        return {"slots": len(slots), "done": len(done), "complete": len(by_state[state.COMPLETE]),
                "pruned": len(by_state[state.PRUNED] - by_state[state.COMPLETE]), "running": len(running),
                "failed": len(failed), "left": len(slots) - len(done) - len(running) - len(failed)}

    def line(self, study: optuna.Study, counts: dict[str, int]) -> str:
        optuna = store.import_optuna()
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        text = (f"study {self.spec.name}: {counts['done']}/{counts['slots']} done ({counts['pruned']} pruned), "
                f"{counts['running']} running, {counts['left']} left")
        if counts["failed"]:
            text += f", {counts['failed']} failed"
        if complete:
            pick = max if self.spec.objective.direction == "maximize" else min
            best = pick(complete, key=lambda t: t.value)
            text += f" · best {self.spec.objective.title} {best.value:.4f} (trial {best.number}: {best.user_attrs['cell']}"
            searched = ", ".join(f"{s.name}={best.params[s.name]:.4g}" for s in self.spec.search)
            text += f", {searched})" if searched else ")"
        elapsed = time.monotonic() - self.started
        text += f" · {format_duration(elapsed)} elapsed"
        seconds = [t.user_attrs["seconds"] for t in study.get_trials(deepcopy=False) if "seconds" in t.user_attrs
                   and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        if seconds and counts["left"] + counts["running"]:
            left = sum(seconds) / len(seconds) * (counts["left"] + counts["running"] / 2) / self.workers
            text += f", ~{format_duration(left)} left"
        return text

    def show(self, study: optuna.Study, every: float) -> dict[str, int]:
        """Print a line when the counts changed or every ``every`` seconds; returns the counts."""
        counts = self.counts(study)
        key = (counts["done"], counts["running"], counts["failed"])
        now = time.monotonic()
        if key != self.last or now - self.shown >= every:
            print(self.line(study, counts), flush=True)
            if not self.last or key[0] != self.last[0]:
                self.on_done(counts)
            self.last, self.shown = key, now
        return counts


def run_here(spec: StudySpec, out: Path, url: str, config: StudyConfig, study: optuna.Study,
             progress: Progress) -> bool:
    """Run the workers as processes of this machine until no trial is left; returns whether it was interrupted."""
    gpus, cpus = visible_gpus(), len(os.sched_getaffinity(0))
    pinned = f"GPU {', '.join(gpus)}" if gpus else f"{max(1, cpus // config.workers)} CPU thread(s) each"
    print(f"study {spec.name}: {len(spec.slots())} trials in {url}; {config.workers} worker(s) here ({pinned}); "
          f"run directories in {out / 'trials'}", flush=True)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=work, name=f"worker-{i}", args=(WorkerPlan(
        spec, str(out), url, config.heartbeat, i, worker_env(i, config.workers, gpus, cpus)),))
        for i in range(config.workers)]
    interrupted = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        while any(process.is_alive() for process in processes):
            progress.show(study, config.progress_every)
            multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()], timeout=1.0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return interrupted


def run_on_slurm(spec: StudySpec, out: Path, url: str, config: StudyConfig, study: optuna.Study,
                 progress: Progress) -> bool:
    """Submit the workers as an array job (none when every trial is done) and follow the study until the jobs end;
    returns whether following was interrupted (the jobs go on)."""
    try:
        from . import slurm
    except ImportError as err:
        if err.name != "submitit":
            raise
        raise RobustDistillError(f"robustdistill study --slurm needs submitit: {INSTALL}") from None
    counts = progress.counts(study)
    if counts["done"] == counts["slots"]:
        return False
    jobs = slurm.submit(spec, out, url, config)
    ids = ", ".join(sorted({job.job_id.split("_")[0] for job in jobs}))
    print(f"study {spec.name}: {len(spec.slots())} trials in {url}; {config.workers} worker(s) submitted as job(s) "
          f"{ids} ({config.slurm_gpus_per_task} GPU(s) and {config.slurm_time} min each, "
          f"requeued at the time limit; logs in {jobs[0].paths.folder}); run directories in {out / 'trials'}",
          flush=True)
    try:
        while not all(job.done() for job in jobs):
            progress.show(study, config.progress_every)
            time.sleep(SLURM_POLL)
    except KeyboardInterrupt:
        print(f"study {spec.name}: no longer followed; its jobs go on (scancel stops them), and the same command "
              "writes the table", flush=True)
        return True
    for failure in slurm.failures(jobs):
        print(f"study {spec.name}: {failure}", flush=True)
    return False


def report_best(spec: StudySpec, out: Path, study: optuna.Study, config: StudyConfig, registry: Registry) -> None:
    """``robustdistill report`` of the best complete trial of each grid cell, into ``OUT/report``; each run appears
    under its cell's name (``OUT/report/runs/CELL`` links to its run directory)."""
    from .._command_config import ReportConfig
    from .._report import report_command

    optuna = store.import_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return
    run_dirs = {t.number: out / t.user_attrs["run_dir"] for t in complete}
    better = max if spec.objective.direction == "maximize" else min
    best: dict[str, Any] = {}
    for result in results(spec, complete):
        name = " ".join([result.row, *(f"{k}={v}" for k, v in result.options)]).replace(" ", "_")
        best[name] = better(best.get(name, result), result, key=lambda r: r.objective)
    links = out / "report" / "runs"
    links.mkdir(parents=True, exist_ok=True)
    for name, result in best.items():
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(run_dirs[result.number].resolve(), target_is_directory=True)
    print(f"study {spec.name}: the report of the best trial of each cell goes to {out / 'report'}", flush=True)
    report_command(ReportConfig(runs=tuple(str(links / name) for name in best), out=str(out / "report"),
                                models=config.report == "models"), registry)


def study_command(config: StudyConfig, registry: Registry) -> int:
    """Run ``robustdistill study`` (see the module's docstring). Returns 0 when every trial is done, 1 when some
    failed (a rerun retries them), 130 when interrupted (a rerun continues)."""
    optuna = store.import_optuna()
    spec = read_spec(config, registry)
    out = Path(config.out or f"runs/study-{spec.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = config.storage or store.default_storage(out)
    storage = store.open_storage(url, config.heartbeat)
    study = store.open_study(spec, storage)
    results_dir = Path(config.results) if config.results else None

    def tabulate(counts: dict[str, int]) -> Path:
        """Write the table (and, with ``--results``, copy the finished runs' small files); returns its path."""
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        path = write_summary(out, summarize(spec, results(spec, complete), counts, teacher_results(spec, out)))
        if results_dir is not None:
            mirror(spec, out, complete, results_dir)
        return path

    progress = Progress(spec, config.workers, on_done=tabulate)
    interrupted = (run_on_slurm if config.slurm else run_here)(spec, out, url, config, study, progress)
    counts = progress.show(study, config.progress_every)
    path = tabulate(counts)
    where = f" (copied with the runs' small files to {results_dir})" if results_dir is not None else ""
    print(f"study {spec.name}: table in {path} and {out / 'summary.json'}{where}", flush=True)
    if interrupted:
        print(f"study {spec.name}: interrupted; the same command continues it", flush=True)
        return 130
    if config.report != "off":
        report_best(spec, out, study, config, registry)
    if counts["failed"] or counts["left"]:
        print(f"study {spec.name}: {counts['failed']} trial(s) failed (the reason is in the storage and their "
              "train.log); the same command retries them", flush=True)
        return 1
    return 0
