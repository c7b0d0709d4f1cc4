"""The ``robustdistill eval`` command."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .._checkpoint import atomic_write_text
from .._command_config import EvalConfig
from .._config import NORMS, format_duration, resolve_device
from .._folding import fold_or_keep, folded_pairs
from .._registry import DatasetInfo, EvalAttack, Registry, RobustDistillError
from .._resolve import recorded_teacher
from .._specs import load_model_spec, open_source
from .alignment import gradient_cosine
from .autoattack import _import_autoattack, attack_details
from .harness import run_evaluation, worst_class
from .progress import EvalProgress
from .results import _finished_attacks, _results_file, decode_points, encode_points, weights_fingerprint, worst_case
from .sanity import format_sanity, run_sanity, sanity_plan, sanity_section
from .settings import AUTOATTACK_MISSING, RESULT_METADATA_KEYS, EvalSettings


def _format_eps(eps: float) -> str:
    scaled = eps * 255
    if scaled >= 0.5 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:.6g}"


def _config_number(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key)
    return float(default) if value is None else float(value)


def _select_attacks(text: str, registry: Registry) -> list[EvalAttack]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    known = ", ".join(sorted(registry.eval_attacks)) or "(none registered)"
    if not names:
        raise RobustDistillError(f"--attacks names no attack; known attacks: {known}")
    unknown = [name for name in names if name not in registry.eval_attacks]
    if unknown:
        raise RobustDistillError(f"unknown attack{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                 f"known attacks: {known}")
    clashing = [name for name in names if name in RESULT_METADATA_KEYS]
    if clashing:
        raise RobustDistillError(f"attack name(s) {', '.join(clashing)} clash with keys of the result file; "
                                 "rename the attack in its plugin")
    return [registry.eval_attacks[name] for name in names]


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


WORST_CASE_ROW = "all together"


def _print_table(accuracy: dict[str, float], seconds: dict[str, float], earlier: set[str],
                 per_class: dict[str, list[float | None]], together: tuple[float | None, list[str]]) -> None:
    """Each attack's accuracy, worst-class accuracy (and which class) and seconds, the per-example worst case over
    the attacks with per-image outcomes (``together``: its accuracy and those attacks); then a row per class."""
    width = max(len("attack"), len(WORST_CASE_ROW), *(len(name) for name in accuracy))
    print(f"{'attack':<{width}}  {'accuracy':>9}  {'worst class':>16}  {'seconds':>8}")
    for name, acc in accuracy.items():
        classes = per_class.get(name) or []
        worst = worst_class(classes)
        which = f"{_percent(worst)} ({classes.index(worst)})" if worst is not None else "—"
        note = "  (from the --json file)" if name in earlier else ""
        print(f"{name:<{width}}  {100 * acc:>8.2f}%  {which:>16}  {seconds.get(name, float('nan')):>8.1f}{note}")
    overall, covered = together
    if overall is not None:
        left_out = [name for name in accuracy if name not in covered]
        note = f" (not {', '.join(left_out)}: no per-image outcomes in the --json file)" if left_out else ""
        print(f"{WORST_CASE_ROW:<{width}}  {100 * overall:>8.2f}%  {'':>16}  {'':>8}  robust only if every attack "
              f"failed: {', '.join(covered)}{note}")
    shown = [name for name in accuracy if per_class.get(name)]
    if not shown:
        return
    columns = [max(len(name), 7) for name in shown]
    print("\n" + f"{'class':<{width}}  " + "  ".join(f"{name:>{w}}" for name, w in zip(shown, columns)))
    for label in range(max(len(per_class[name]) for name in shown)):
        cells = [_percent(per_class[name][label] if label < len(per_class[name]) else None) for name in shown]
        print(f"{label:<{width}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(cells, columns)))


def _has_autoattack() -> bool:
    try:
        _import_autoattack()
    except RobustDistillError:
        return False
    return True


def _teacher(given: str | None, flag: str, args: EvalConfig, config: dict[str, Any], info: DatasetInfo,
             registry: Registry, norm: str, what: str) -> tuple[str | None, nn.Module | None]:
    """The teacher ``given`` names (``teacher``: the run's default teacher), else the run's when it can be found
    (``None`` given: only where the run has one); ``none``: no teacher. ``what`` names its use in notes."""
    if given == "none":
        return None, None
    options: dict[str, Any] = {"robustbench_dir": args.robustbench_dir}
    if given not in (None, "teacher"):
        spec = given
    else:
        recorded = recorded_teacher(config)
        if recorded is None:
            if given == "teacher":
                raise RobustDistillError(f"{flag} teacher: the checkpoint records no teacher; name one ({flag} SPEC)")
            return None, None
        spec = recorded["spec"]
        options = {"arch": recorded["arch"], "normalize": recorded["normalize"], "activation": recorded["activation"],
                   "robustbench_dir": args.robustbench_dir or recorded["robustbench_dir"]}
        if not spec.startswith(("robustbench:", "timm:")) and not Path(spec).exists():
            print(f"note: the run's teacher {spec} is not found; {what} is skipped ({flag} SPEC names it)",
                  flush=True)
            return None, None
        if recorded["resize"]:
            print(f"note: the run's teacher sees resized images; {what} is skipped ({flag} SPEC names a teacher of "
                  "the model's input size)", flush=True)
            return None, None
    loaded = load_model_spec(spec, info=info, models=registry.models, download=args.download, norm=norm,
                             flag_prefix="teacher-", **options)
    if loaded.arch.num_classes != info.num_classes:
        if given not in (None, "teacher"):
            raise RobustDistillError(f"{flag} {spec}: a {loaded.arch.num_classes}-class model, but "
                                     f"{info.name} has {info.num_classes} classes; name a teacher of this dataset")
        print(f"note: the run's teacher {spec} has {loaded.arch.num_classes} classes, not {info.num_classes}; "
              f"{what} is skipped", flush=True)
        return None, None
    return spec, loaded.model


def eval_command(args: EvalConfig, registry: Registry) -> int:
    """Run ``robustdistill eval``: print an accuracy table and optionally write JSON. Returns 0 (130 when
    interrupted: the attacks finished by then are in the ``--json`` file, and a rerun continues)."""
    selected = _select_attacks(args.attacks, registry)
    for attack in selected:
        if attack.check is not None:
            attack.check()  # fail before loading anything
    if args.redo and not args.json:
        raise RobustDistillError("--redo starts a --json file over; without --json every attack runs anyway")
    device = resolve_device(args.device)
    from .._ops import select_backend

    ops_backend = select_backend(args.ops_backend, device)
    path = str(args.checkpoint)
    source = open_source(path)
    config = source.config

    dataset_name = args.dataset or config.get("dataset")
    if not dataset_name:
        raise RobustDistillError(f"{path!r} does not name its dataset; pass --dataset NAME "
                                 f"(known: {', '.join(sorted(registry.datasets))})")
    data_dir = args.data_dir if args.data_dir is not None else config.get("data_dir")
    data = registry.dataset(str(dataset_name)).load(data_dir, args.download)
    info = data.info
    loaded = load_model_spec(source, info=info, models=registry.models, arch=args.arch, normalize=args.normalize,
                             robustbench_dir=args.robustbench_dir, download=args.download,
                             norm=args.norm or "linf", flag_prefix="")
    model, arch = loaded.model, loaded.arch
    test_x, test_y = data.test_x, data.test_y
    if arch.num_classes != info.num_classes:
        raise RobustDistillError(f"{path!r} is a {arch.num_classes}-class model but dataset {info.name!r} has "
                                 f"{info.num_classes} classes; pass the dataset it was trained on with --dataset")
    if test_x.dim() != 4 or test_x.shape[1] != arch.in_channels:
        raise RobustDistillError(f"{path!r} expects {arch.in_channels}-channel images but dataset {info.name!r} "
                                 f"has test images of shape {tuple(test_x.shape[1:])}; pass the right --dataset")

    norm = args.norm or (config.get("norm") if config.get("norm") in NORMS else "linf")
    source_norm = config.get("norm") if config.get("norm") in NORMS else "linf"
    if norm != source_norm and (args.eps is None or args.step_size is None):
        raise RobustDistillError(f"--norm {norm} differs from the {source_norm} threat model the default radius is "
                                 "meant for; give --eps and --step-size for it as well")
    eps = args.eps if args.eps is not None else _config_number(config, "eps", info.eps)
    step_size = args.step_size if args.step_size is not None else _config_number(config, "step_size", info.step_size)
    settings = EvalSettings(eps=eps, step_size=step_size, pgd_steps=args.pgd_steps, cw_steps=args.cw_steps,
                            kappa=args.kappa, restarts=args.restarts, norm=norm, cw_restarts=args.cw_restarts,
                            autoattack_version=args.autoattack_version)

    n_total = int(test_x.shape[0])
    n = n_total if args.subset is None else min(args.subset, n_total)
    if args.subset is not None and args.subset > n_total:
        print(f"note: --subset {args.subset} exceeds the {n_total} test images; using all of them")

    current: dict[str, Any] = {
        "eps": eps, "n": n, "dataset": info.name, "checkpoint": path, "arch": arch.name,
        "normalization": loaded.normalization, "weights_sha256": weights_fingerprint(model), "preset": args.preset,
        "settings": {**settings.to_dict(), "batch_size": args.batch_size, "seed": args.seed,
                     "ops_backend": ops_backend,
                     "attacks": {a.name: attack_details(a.name, settings) for a in selected}},
    }
    if loaded.weights is not None:
        current["weights"] = loaded.weights  # which of the checkpoint's models: the run's final one by default
    json_path = Path(args.json) if args.json else None
    previous = None
    if json_path is not None and json_path.exists() and not args.redo:
        previous = _finished_attacks(json_path, current, [a.name for a in selected])
    earlier = {a.name for a in selected if previous is not None and isinstance(previous.get(a.name), (int, float))}
    to_run = [a for a in selected if a.name not in earlier]
    sanity_done = args.sanity and previous is not None and isinstance(previous.get("sanity"), dict)
    earlier_points = {name: decode_points(((previous or {}).get("correct") or {}).get(name), n) for name in earlier}
    outcomes = {name: points for name, points in earlier_points.items() if points is not None}
    plan = teacher = None
    if args.sanity and not sanity_done:
        teacher_spec, teacher = _teacher(args.sanity_teacher, "--sanity-teacher", args, config, info, registry, norm,
                                         "the transfer check")
        plan = sanity_plan(settings, min(n, args.sanity_images), {a.name for a in to_run} | set(outcomes),
                           square=_has_autoattack(), teacher=teacher_spec)
        if not plan.square_queries:
            print(f"note: the Square check needs pyautoattack ({AUTOATTACK_MISSING}); it is skipped", flush=True)
        if teacher is not None:
            teacher.to(device).eval()

    model.to(device).eval()
    if args.fold_bn == "on":
        model = fold_or_keep(model, live=False, what="evaluated model")
    current["settings"]["folded_conv_bn"] = folded_pairs(model)
    weights = f" ({loaded.weights} weights)" if loaded.weights not in (None, "student") else ""
    print(f"{path}{weights}: {arch.name} on {info.name} ({n} test images), eps {_format_eps(eps)} {norm}, "
          f"step {_format_eps(step_size)}, device {device}; input normalisation {loaded.normalization}", flush=True)
    if earlier:
        print(f"{', '.join(sorted(earlier, key=[a.name for a in selected].index))} already in {json_path}: "
              f"skipped (--redo evaluates {'them' if len(earlier) > 1 else 'it'} again)", flush=True)
    if plan is not None:
        print(f"then {plan.describe()}", flush=True)
    elif sanity_done:
        print(f"sanity checks already in {json_path}: skipped (--redo runs them again)", flush=True)
    accuracy: dict[str, float] = {}
    seconds: dict[str, float] = {}
    per_class: dict[str, list[float | None]] = {}
    points: dict[str, str] = {}

    def write(sanity: dict[str, Any] | None = None, alignment: dict[str, Any] | None = None) -> None:
        if json_path is not None:
            pending = [a.name for a in to_run if a.name not in accuracy]
            atomic_write_text(json_path, json.dumps(_results_file(previous, current, accuracy, seconds, pending,
                                                                  per_class, points, sanity, alignment),
                                                    indent=2) + "\n")

    def save(name: str, acc: float, secs: float, classes: list[float | None], correct: Tensor) -> None:
        accuracy[name], seconds[name], per_class[name] = acc, secs, classes
        points[name], outcomes[name] = encode_points(correct), correct
        write()

    if json_path is not None and (to_run or previous is None):
        atomic_write_text(json_path, json.dumps(_results_file(previous, current, {}, {}, [a.name for a in to_run]),
                                                indent=2) + "\n")  # an unwritable path fails before any attack
    progress = EvalProgress() if args.progress else False
    try:
        run_evaluation(model, test_x[:n], test_y[:n], to_run, settings, batch_size=args.batch_size,
                       device=device, progress=progress, seed=args.seed, on_attack_end=save)
    except KeyboardInterrupt:
        kept = f"{len(accuracy)} finished attack(s) are in {json_path}; rerun the same command to continue" \
            if json_path is not None else "nothing is kept without --json FILE"
        print(f"robustdistill: interrupted; {kept}", file=sys.stderr)
        return 130
    section = (previous or {}).get("sanity") if sanity_done else None
    if plan is not None:
        pgd_seconds = seconds.get("pgd20")
        if pgd_seconds is not None and n:
            expected = pgd_seconds / (settings.pgd_steps * n) * plan.passes * plan.images
            print(f"sanity: about {format_duration(expected)} expected", file=sys.stderr, flush=True)
        began = time.perf_counter()
        checks = run_sanity(model, test_x[:n], test_y[:n], settings, plan, batch_size=args.batch_size,
                            device=device, seed=args.seed, known=outcomes, teacher=teacher,
                            say=(lambda line: print(line, file=sys.stderr, flush=True)) if args.progress
                            else (lambda line: None))
        section = sanity_section(plan, checks, time.perf_counter() - began)
        write(section)
    alignment = (previous or {}).get("gradient_cosine")
    if args.gradient_cosine is not None and (alignment is None or alignment.get("teacher") != args.gradient_cosine):
        spec, aligned_with = _teacher(args.gradient_cosine, "--gradient-cosine", args, config, info, registry, norm,
                                      "the gradient cosine")
        if aligned_with is not None:
            cosines = gradient_cosine(model, aligned_with.to(device).eval(), test_x[:n], test_y[:n],
                                      batch_size=args.batch_size, device=device)
            alignment = {"teacher": args.gradient_cosine, "spec": spec, "images": int(cosines.numel()),
                         "mean": float(cosines.mean()), "sd": float(cosines.std()) if cosines.numel() > 1 else None}
            write(section, alignment)
    table = {a.name: float(previous[a.name]) if a.name in earlier else accuracy[a.name]  # type: ignore[index]
             for a in selected}
    table_seconds = {**((previous or {}).get("seconds") or {}), **seconds}
    table_classes = {**{k: v for k, v in ((previous or {}).get("per_class") or {}).items() if k in earlier},
                     **per_class}
    table_points = {**{k: v for k, v in ((previous or {}).get("correct") or {}).items() if k in earlier}, **points}
    _print_table(table, table_seconds, earlier, table_classes,
                 worst_case({k: v for k, v in table_points.items() if k in table}, n))
    if section is not None:
        print("\n" + format_sanity(section))
    if alignment is not None:
        sd = f" ± {alignment['sd']:.3f}" if alignment.get("sd") is not None else ""
        print(f"\ninput-gradient cosine with {alignment['spec']}: {alignment['mean']:.3f}{sd} (mean ± sd over "
              f"{alignment['images']} test images, cos(∇x CE of the model, ∇x CE of the teacher))")
    if json_path is not None and (to_run or plan is not None or alignment is not None):
        print(f"wrote {json_path}")
    return 0
