"""Resolution: the requested configuration, the plugins, the dataset and the device in; the configuration the run
trains with out. One pure function, :func:`resolve_config`, used by the engine and the author kit alike.

What the user left unset (``None``) is filled in this order: the core options from the dataset and the device
(ε, step, steps, model, milestones, the validation split), the methods (the default base of an add-on selected
alone), the training attack, the teachers by role, what add-ons declare for their base method
(:class:`~robustdistill.api.Composition`), and each active plugin's ``resolve_options``. Values given on the
command line always win.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from ._config import PluginOptions, RunConfig, namespace, option_key
from ._context import DEFAULT_TEACHER
from ._registry import DatasetInfo, Default, RobustDistillError

if TYPE_CHECKING:
    from ._manager import PluginHost

VAL_SPLIT = 500
"""Training images held out for validation by default (a tenth of the training set when that is fewer)."""
_ROLE = re.compile(r"^([a-z][a-z0-9_]*)=(.+)$")


@dataclass(frozen=True)
class Resolution:
    """What :func:`resolve_config` decides: the resolved configuration and what the run derives from it.

    ``teachers`` maps each teacher role to its spec (``--teacher [ROLE=]SPEC``), ``default_teacher`` is the role
    ``ctx.teacher`` means; ``sources`` says, for each plugin option a composition or a ``Default`` filled,
    its value and where it comes from (``{"igdm.alpha": {"value": 5.0, "source": "...", "borrowed": true}}``).
    """

    config: RunConfig
    base_method: str | None
    active: tuple[str, ...]
    teachers: Mapping[str, str]
    default_teacher: str | None
    sources: Mapping[str, Mapping[str, Any]]

    def borrowed(self) -> list[str]:
        """One line per borrowed default: which option took which value, and from where."""
        return [f"{key} = {entry['value']!r}: {entry['source']}" for key, entry in self.sources.items()
                if entry.get("borrowed")]


def resolve_config(requested: RunConfig, host: "PluginHost", dataset: DatasetInfo, *, train_images: int,
                   device_type: str, ops_backend: str, world: int = 1) -> Resolution:
    """Resolve ``requested`` for training on ``dataset`` (``train_images`` images before the validation split)
    on a device of type ``device_type`` with ``world`` processes; ``ops_backend`` is the kernels' backend in
    use. Raises ``RobustDistillError`` naming the option to fix."""
    methods = tuple(host.resolve_methods(requested.plugin))
    config = replace(requested, plugin=methods)
    check_options(config, host, world)
    config = resolve_core(config, dataset, device_type, ops_backend, train_images)
    base = next(iter(host.attack_owners(methods)), None)
    teachers, default_teacher = resolve_teachers(config, host, base)
    config = replace(config, attack=host.resolve_attack(methods, config.attack, default_teacher is not None))
    config, sources = resolve_plugin_options(config, host, dataset, base)
    return Resolution(config=config, base_method=base, active=tuple(host.active_plugins(methods)),
                      teachers=MappingProxyType(teachers), default_teacher=default_teacher,
                      sources=MappingProxyType(sources))


# -- core options --------------------------------------------------------------------------------------

def check_options(config: RunConfig, host: "PluginHost", world: int) -> None:
    """Checks that need neither data nor models."""
    if config.epochs < 1:
        raise RobustDistillError(f"--epochs {config.epochs} must be at least 1")
    if config.batch_size < 1:
        raise RobustDistillError(f"--batch-size {config.batch_size} must be at least 1")
    if config.batch_size % world:
        raise RobustDistillError(f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                                 f"{world} processes")
    if config.nesterov and config.momentum <= 0:
        raise RobustDistillError(f"--nesterov needs a positive --momentum (got {config.momentum:g}); e.g. 0.9")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise RobustDistillError(f"--checkpoint-every {config.checkpoint_every} must be at least 1 (steps)")
    if config.checkpoint_minutes < 0:
        raise RobustDistillError(f"--checkpoint-minutes {config.checkpoint_minutes} must be 0 (off) or positive")
    if config.subset is not None and config.subset < 1:
        raise RobustDistillError(f"--subset {config.subset} leaves no training images; pass at least 1")
    if config.val_split is not None and config.val_split < 0:
        raise RobustDistillError(f"--val-split {config.val_split} must be 0 (none held out) or positive")
    if config.val_test < 0:
        raise RobustDistillError(f"--val-test {config.val_test} must be 0 (off) or positive")
    if config.model is not None:
        host.registry.model(config.model)
    host.registry.dataset(config.dataset)


def default_milestones(epochs: int) -> tuple[int, ...]:
    """Multistep milestones when none are given: 50% and 75% of the epochs."""
    return tuple(sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m >= 1}))


def default_val_split(train_images: int) -> int:
    """:data:`VAL_SPLIT` images, or a tenth of the training set when that is fewer."""
    return min(VAL_SPLIT, train_images // 10)


def resolve_core(config: RunConfig, info: DatasetInfo, device_type: str, ops_backend: str,
                 train_images: int) -> RunConfig:
    """Fill what the user left unset from the dataset and the device, and record what the run will use."""
    cuda = device_type == "cuda"
    resolved = replace(
        config,
        eps=config.eps if config.eps is not None else info.eps,
        step_size=config.step_size if config.step_size is not None else info.step_size,
        attack_steps=config.attack_steps if config.attack_steps is not None else info.attack_steps,
        model=config.model or ("cnn" if info.image_size <= 28 else "resnet18"),
        milestones=config.milestones if config.milestones is not None or config.lr_schedule != "multistep"
        else default_milestones(config.epochs),
        amp=config.amp if cuda else "off",
        cudnn_benchmark=config.cudnn_benchmark if cuda else "off",
        channels_last=("on" if cuda else "off") if config.channels_last == "auto" else config.channels_last,
        ops_backend=ops_backend,
        val_split=config.val_split if config.val_split is not None else default_val_split(train_images),
    )
    if not 0 < resolved.eps <= 1:
        raise RobustDistillError(f"--eps {resolved.eps} is outside (0, 1]; inputs are in [0,1], e.g. --eps 8/255 or 0.1")
    if not 0 < resolved.step_size <= 1:
        raise RobustDistillError(f"--step-size {resolved.step_size} is outside (0, 1]; e.g. --step-size 2/255")
    if resolved.attack_steps < 1:
        raise RobustDistillError(f"--attack-steps {resolved.attack_steps} must be at least 1")
    check_split(resolved, info.name, train_images)
    return resolved


def check_split(config: RunConfig, dataset: str, train_images: int) -> None:
    """The held-out split and ``--subset`` must leave images to train on and must not overlap."""
    split = config.val_split or 0
    if split >= train_images:
        raise RobustDistillError(f"--val-split {split} holds out every one of {dataset}'s {train_images:,} training "
                                 "images; hold out fewer")
    if config.subset is not None and config.subset > train_images - split:
        raise RobustDistillError(
            f"--subset {config.subset} reaches into the {split} validation images held out from the end of "
            f"{dataset}'s {train_images:,} training images; use --subset {train_images - split} or fewer, or a "
            "smaller --val-split")


# -- teachers --------------------------------------------------------------------------------------------

def role_values(entries: tuple[str, ...] | str | None, flag: str) -> dict[str, str]:
    """``ROLE=VALUE`` entries (a bare ``VALUE`` is the default teacher's) as ``{role: value}``."""
    if entries is None:
        return {}
    values: dict[str, str] = {}
    for entry in (entries,) if isinstance(entries, str) else entries:
        match = _ROLE.match(entry)
        role, value = (match.group(1), match.group(2)) if match else (DEFAULT_TEACHER, entry)
        if role in values:
            raise RobustDistillError(f"{flag} is given twice for {_teacher_words(role)}; give it once")
        values[role] = value
    return values


def recorded_teacher(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The default teacher a run's recorded options (``config.json``, a checkpoint's ``config``) name, with the
    options ``train`` loaded it with: ``spec``, ``arch``, ``normalize``, ``robustbench_dir``, ``activation``,
    ``resize``; ``None`` when the run had no teacher."""
    teachers = role_values(config.get("teacher"), "--teacher")
    if not teachers:
        return None
    role = DEFAULT_TEACHER if DEFAULT_TEACHER in teachers else next(iter(teachers))
    archs = role_values(config.get("teacher_arch"), "--teacher-arch")
    norms = role_values(config.get("teacher_normalize"), "--teacher-normalize")
    return {"spec": teachers[role], "arch": archs.get(role, archs.get(DEFAULT_TEACHER)),
            "normalize": norms.get(role, norms.get(DEFAULT_TEACHER)),
            "robustbench_dir": config.get("robustbench_dir"), "activation": config.get("activation", "relu"),
            "resize": bool(config.get("teacher_resize"))}


def _teacher_words(role: str) -> str:
    return "the teacher" if role == DEFAULT_TEACHER else f"the teacher {role!r}"


def resolve_teachers(config: RunConfig, host: "PluginHost", base: str | None) -> tuple[dict[str, str], str | None]:
    """The teachers by role, and the default teacher's role, checked against the roles the methods declare."""
    given = role_values(config.teacher, "--teacher")
    methods = [host.registry.methods[m] for m in config.plugin]
    declared: dict[str, str] = {}
    for method in sorted(methods, key=lambda m: m.name != base):  # the base method's roles first
        for role in method.teachers:
            declared.setdefault(role, method.name)
    for role, method in declared.items():
        if role not in given:
            roles = " and ".join(r for r, m in declared.items() if m == method)
            raise RobustDistillError(f"plugin {method!r} distils from the teachers {roles}: pass --teacher {role}=SPEC "
                                     "(and one --teacher ROLE=SPEC for each)")
    for role in given:
        if role != DEFAULT_TEACHER and role not in declared:
            known = ", ".join(declared) or "none: the selected methods take one teacher, --teacher SPEC"
            raise RobustDistillError(f"--teacher {role}=...: no selected method distils from a teacher {role!r} "
                                     f"(the roles they take: {known})")
    default = DEFAULT_TEACHER if DEFAULT_TEACHER in given else next(iter(declared), None)
    needs = [m.name for m in methods if m.needs_teacher]
    if needs and default is None:
        raise RobustDistillError(
            f"plugin {needs[0]!r} distils from a teacher: pass --teacher CKPT. Train one with "
            f"`robustdistill train --plugin at --dataset {config.dataset} --out runs/teacher`")
    for flag, entries in (("--teacher-arch", config.teacher_arch), ("--teacher-normalize", config.teacher_normalize)):
        for role in role_values(entries, flag):
            if role != DEFAULT_TEACHER and role not in given:
                raise RobustDistillError(f"{flag} {role}=...: the run has no teacher {role!r} (--teacher {role}=SPEC)")
    return given, default


# -- plugin options --------------------------------------------------------------------------------------

def resolve_plugin_options(config: RunConfig, host: "PluginHost", dataset: DatasetInfo,
                           base: str | None) -> tuple[RunConfig, dict[str, dict[str, Any]]]:
    """Keep the options of the active plugins; fill their unset values from the add-ons' compositions, then
    through ``resolve_options``. Returns the configuration and the sources of the filled values."""
    from ._manager import PluginError

    registry = host.registry
    active = host.active_plugins(config.plugin)
    values = {name: dict(config.plugin_options[namespace(name)].values) if namespace(name) in config.plugin_options
              else {option_key(name, o): o.default for o in registry.options[name]}
              for name in active if name in registry.options}
    sources: dict[str, dict[str, Any]] = {}
    with_methods = set(registry.method_plugin.values())
    targets = [base] if base is not None else []
    targets += [name for name in active if name in values and name not in with_methods]  # e.g. average
    for target in targets:
        for key, (value, addon, source) in composed_options(config, host, dataset, target).items():
            owner = registry.method_plugin.get(target, target)
            if values[owner][key] is None:
                values[owner][key] = value
                sources[f"{namespace(owner)}.{key}"] = {"value": value, "source": f"{addon}: {source}"}

    def frozen() -> RunConfig:
        return replace(config, plugin_options=MappingProxyType(
            {namespace(n): PluginOptions(n, MappingProxyType(dict(v))) for n, v in values.items()}))

    composed = frozen()
    arguments = {"config": composed, "dataset": dataset, "base_method": base}
    for impl in host.pm.hook.resolve_options.get_hookimpls():
        name = impl.plugin_name
        if name not in active:
            continue
        try:
            resolved = impl.function(**{k: arguments[k] for k in impl.argnames}) or {}
        except RobustDistillError:
            raise
        except Exception as err:
            raise PluginError(f"plugin {name!r} failed in hook 'resolve_options': {type(err).__name__}: {err}") \
                from err
        own = values.get(name, {})
        unknown = set(resolved) - set(own)
        if unknown:
            raise PluginError(f"plugin {name!r} resolved options it does not own: {sorted(unknown)}")
        for key, value in resolved.items():
            if own[key] is not None:
                continue
            if isinstance(value, Default):
                sources[f"{namespace(name)}.{key}"] = {"value": value.value, "source": value.source,
                                                       "borrowed": value.borrowed}
                value = value.value
            own[key] = value
    return frozen(), sources


def composed_options(config: RunConfig, host: "PluginHost", dataset: DatasetInfo,
                     base: str) -> dict[str, tuple[Any, str, str]]:
    """``{base option key: (value, add-on, source)}`` that the selected add-ons declare for ``base``: the base
    method, or a plugin that registers no method (``average``), whose options the selected methods' compositions
    set."""
    from ._manager import PluginError

    registry = host.registry
    owner = registry.method_plugin.get(base, base)
    keys = {option_key(owner, o) for o in registry.options.get(owner, [])}
    chosen: dict[str, tuple[Any, str, str]] = {}
    for comp in registry.compositions:
        if comp.base != base or comp.addon == base or comp.addon not in config.plugin:
            continue
        if comp.num_classes is not None and comp.num_classes != dataset.num_classes:
            continue
        for key, value in comp.options.items():
            if key not in keys:
                raise PluginError(f"the composition of {comp.addon!r} with {base!r} sets {key!r}, which is not an "
                                  f"option of plugin {owner!r} (its options: {sorted(keys)})")
            if key in chosen and chosen[key][0] != value:
                raise RobustDistillError(
                    f"{chosen[key][1]} and {comp.addon} set {base}'s option {key!r} differently ({chosen[key][0]!r} "
                    f"and {value!r}); give it on the command line")
            chosen[key] = (value, comp.addon, comp.source)
    return chosen
