"""The study's state in Optuna: the storage (SQLite by default, any RDB URL, or a journal file), the queue of
slots, and taking a queued trial so that no two workers take the same one."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._registry import RobustDistillError
from .spec import StudySpec, slot_key

if TYPE_CHECKING:
    import optuna

INSTALL = "pip install 'robustdistill[study]'"
SPEC_ATTR = "robustdistill_spec"
MAX_RETRY = 3
"""Retries of a trial whose worker stopped beating (a further rerun of the command queues it again)."""


def import_optuna() -> Any:
    """Optuna, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise RobustDistillError(f"robustdistill study needs Optuna: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'study.db'}"


def open_storage(url: str, heartbeat: int) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats and retries of trials whose worker died, for a URL; a journal file
    (no heartbeats) for a path."""
    optuna = import_optuna()
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))


def beats(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage keeps heartbeats (RDB storages; a journal file does not)."""
    optuna = import_optuna()
    return isinstance(storage, optuna.storages.RDBStorage)


def sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    optuna = import_optuna()
    return optuna.samplers.RandomSampler() if spec.sampler == "random" else optuna.samplers.TPESampler()


def pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    optuna = import_optuna()
    if spec.pruning is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.pruning.min_epochs,
                                                  reduction_factor=spec.pruning.reduction_factor)


def load(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    optuna = import_optuna()
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler(spec), pruner=pruner(spec))


def live_slots(study: optuna.Study) -> set[str]:
    """The slots a trial holds: waiting, running or finished (a failed trial holds none)."""
    optuna = import_optuna()
    states = tuple(s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.FAIL)
    return {t.user_attrs["slot"] for t in study.get_trials(deepcopy=False, states=states) if "slot" in t.user_attrs}


def queue(spec: StudySpec, study: optuna.Study) -> int:
    """Queue every slot no trial holds (all of them in a new study; those whose trials failed in a continued one),
    a failed trial's searched values again so that its run directory resumes. Returns how many were queued."""
    optuna = import_optuna()
    held = live_slots(study)
    failed = {t.user_attrs.get("slot"): t for t in study.get_trials(deepcopy=False,
                                                                     states=(optuna.trial.TrialState.FAIL,))}
    queued = 0
    for cell, index in spec.slots():
        key = slot_key(cell, index)
        if key in held:
            continue
        first = spec.first_for(cell)
        params = failed[key].params if key in failed else (first[index] if index < len(first) else {})
        study.enqueue_trial(dict(params), user_attrs={"slot": key, "cell": cell.key})
        queued += 1
    return queued


def open_study(spec: StudySpec, storage: optuna.storages.BaseStorage, wait: float = 60.0) -> optuna.Study:
    """The study in ``storage``: made and its slots queued when it is new; checked against the study file and its
    failed slots queued again when it exists (a study another command is still making is waited for)."""
    optuna = import_optuna()
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.objective.direction,
                                    sampler=sampler(spec), pruner=pruner(spec))
    except optuna.exceptions.DuplicatedStudyError:
        study = load(spec, storage)
        deadline = time.monotonic() + wait
        while SPEC_ATTR not in study.user_attrs:
            if time.monotonic() > deadline:
                raise RobustDistillError(f"study {spec.name} exists in the storage but was never filled (its "
                                         "command stopped while queueing); give it another --name") from None
            time.sleep(1.0)
        if study.user_attrs[SPEC_ATTR] != spec.identity():
            raise RobustDistillError(f"study {spec.name} in this storage was made from another study file; run it "
                                     "with that file, or give this one another --name")
        if beats(storage):
            optuna.storages.fail_stale_trials(study)
        queue(spec, study)
        return study
    queue(spec, study)
    study.set_user_attr(SPEC_ATTR, spec.identity())
    return study


def take(study: optuna.Study, storage: optuna.storages.BaseStorage) -> tuple[optuna.Trial, int] | None:
    """Take the first queued trial no other worker has taken, with its id in the storage (``None`` when none is
    queued)."""
    optuna = import_optuna()
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING):
            if beats(storage):
                storage.record_heartbeat(trial_id)
            return optuna.trial.Trial(study, trial_id), trial_id
    return None


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a copy of a trial that was stopped before it ended (its run directory then resumes)."""
    optuna = import_optuna()
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)
