"""Loading plugins, the registry they fill, and the typed facade the engine calls hooks through.

Built-in plugins are listed once, in :data:`BUILTIN_PLUGINS`; third-party plugins come from the
``robustdistill`` entry-point group. A third-party plugin that fails to import, whose registration hook
raises, or whose option clashes with another is skipped with one warning naming it and the cause;
``$ROBUSTDISTILL_BLOCK_PLUGINS`` (comma-separated names) keeps installed plugins from loading.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .api import API_VERSION, LossTerm, StepContext, TeacherOutput
from ._config import check_plugin_option, core_options
from ._registry import Method, Option, Registry, RobustDistillError

ENTRY_POINT_GROUP = "robustdistill"
DISABLE_AUTOLOAD_ENV = "ROBUSTDISTILL_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "ROBUSTDISTILL_BLOCK_PLUGINS"
CORE_PLUGIN = "core"
# Registered in this order; pluggy calls hooks in reverse registration order, so the order fixes the
# order of composed methods' loss terms (and with it the floating-point sum).
BUILTIN_PLUGINS: dict[str, str] = {
    "adaad": "robustdistill.plugins.adaad",
    "adaiad": "robustdistill.plugins.adaiad",
    "akd": "robustdistill.plugins.akd",
    "average": "robustdistill.plugins.average",
    "ard": "robustdistill.plugins.ard",
    "at": "robustdistill.plugins.at",
    CORE_PLUGIN: "robustdistill._defaults",
    "edgereg": "robustdistill.plugins.edgereg",
    "fairard": "robustdistill.plugins.fairard",
    "gradnorm": "robustdistill.plugins.gradnorm",
    "iad": "robustdistill.plugins.iad",
    "igam": "robustdistill.plugins.igam",
    "igdm": "robustdistill.plugins.igdm",
    "mlflow": "robustdistill.plugins.mlflow",
    "mtard": "robustdistill.plugins.mtard",
    "natural": "robustdistill.plugins.natural",
    "pag": "robustdistill.plugins.pag",
    "peeraid": "robustdistill.plugins.peeraid",
    "progress": "robustdistill.plugins.progress",
    "records": "robustdistill._records",
    "rrm": "robustdistill.plugins.rrm",
    "rslad": "robustdistill.plugins.rslad",
    "saad": "robustdistill.plugins.saad",
    "tensorboard": "robustdistill.plugins.tensorboard",
    "trades": "robustdistill.plugins.trades",
    "validation": "robustdistill.plugins.validation",
    "wandb": "robustdistill.plugins.wandb",
}
STEP_HOOKS = ("teacher_forward", "input_gradient", "attack", "student_inputs", "loss", "sample_weights")
LIFECYCLE_HOOKS = ("train_start", "epoch_start", "step_end", "epoch_end", "checkpoint_saved", "train_end")


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; the CLI goes on without it."""


class PluginError(RobustDistillError):
    """A plugin raised inside a hook; the original exception is its ``__cause__``."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in" | "third-party"
    hooks: tuple[str, ...]
    methods: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                "hooks": list(self.hooks), "methods": list(self.methods)}


def blocked_names() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


class PluginHost:
    """A pluggy manager with robustdistill's hook specs, the loaded plugins and their registry."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.versions: dict[str, tuple[str, str]] = {}
        self.failed: dict[str, str] = {}
        self.registry = Registry()
        for name in blocked_names():
            self.pm.set_blocked(name)

    # -- loading ----------------------------------------------------------------------------------

    def register(self, plugin: object, name: str, version: str, source: str) -> None:
        """Register a plugin object or module under ``name``; warn when it was built for a newer plugin API."""
        built_for = getattr(plugin, "robustdistill_api", None)
        if built_for is not None and _newer(str(built_for), API_VERSION):
            warnings.warn(f"robustdistill: plugin {name!r} was built for plugin API {built_for} and this is "
                          f"robustdistill {API_VERSION}'s API; it may use what this version lacks: upgrade "
                          "robustdistill", PluginWarning, stacklevel=3)
        self.pm.register(plugin, name=name)
        self.versions[name] = (version, source)
        self.failed.pop(name, None)

    def is_builtin(self, name: str) -> bool:
        return self.versions.get(name, ("", "third-party"))[1] == "built-in"

    def skip(self, name: str, reason: str) -> None:
        """Drop a third-party plugin with one warning; ``--plugin NAME`` later says why it is missing."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.failed[name] = reason
        warnings.warn(f"robustdistill: skipped plugin {name!r}: {reason}", PluginWarning, stacklevel=3)

    def load_entry_points(self) -> None:
        """Load third-party plugins from the ``robustdistill`` entry-point group."""
        for dist in metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                    continue
                if ep.name in BUILTIN_PLUGINS:
                    self.failed[ep.name] = f"its name is taken by a built-in plugin ({dist.metadata['Name']})"
                    continue
                try:
                    plugin = ep.load()
                    self.register(plugin, ep.name, dist.version, "third-party")
                except Exception as err:  # a third-party plugin must not take the CLI down
                    self.skip(ep.name, f"import from {dist.metadata['Name']} {dist.version} failed: "
                                       f"{type(err).__name__}: {err}")

    def load_builtins(self) -> None:
        from . import __version__
        for name, module in BUILTIN_PLUGINS.items():
            if not self.pm.has_plugin(name) and not self.pm.is_blocked(name):
                self.register(importlib.import_module(module), name, __version__, "built-in")

    # -- registry ---------------------------------------------------------------------------------

    def _call_each(self, hook: str, register: Callable[[str], Callable[[Any], None]]) -> None:
        """Call one registration hook per plugin with ``register(plugin_name)`` as its callback.

        A third-party plugin that raises is skipped with a warning; a built-in one is a bug and raises.
        """
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if not self.pm.has_plugin(impl.plugin_name):
                continue  # skipped by an earlier registration hook
            try:
                impl.function(register=register(impl.plugin_name))
            except Exception as err:
                if self.is_builtin(impl.plugin_name):
                    raise
                self.skip(impl.plugin_name, f"{hook} raised {type(err).__name__}: {err}")

    def build_registry(self) -> None:
        """Run the registration hooks, remembering which plugin registered what."""
        reg = self.registry = Registry()
        flags = {o.flag: "the core options" for o in core_options()}

        def add_method(owner: str) -> Callable[[Method], None]:
            def add(method: Method) -> None:
                if method.name in reg.methods:
                    raise RobustDistillError(f"method {method.name!r} is registered by both "
                                             f"{reg.method_plugin[method.name]!r} and {owner!r}")
                reg.methods[method.name] = method
                reg.method_plugin[method.name] = owner
            return add

        def add_option(owner: str) -> Callable[[Option], None]:
            def add(option: Option) -> None:
                if option.flag in flags:
                    raise ValueError(f"option {option.flag} clashes with {flags[option.flag]}")
                check_plugin_option(owner, option)
                flags[option.flag] = f"plugin {owner!r}"
                reg.options.setdefault(owner, []).append(option)
            return add

        self._call_each("register_methods", add_method)
        self._call_each("register_options", add_option)
        self._call_each("register_models", lambda owner: reg.models.append)
        self._call_each("register_datasets", lambda owner: lambda e: reg.datasets.__setitem__(e.name, e))
        self._call_each("register_attacks", lambda owner: lambda e: reg.attacks.__setitem__(e.name, e))
        self._call_each("register_eval_attacks", lambda owner: lambda e: reg.eval_attacks.__setitem__(e.name, e))
        self._call_each("register_compositions", lambda owner: reg.compositions.append)
        # a plugin skipped half-way must leave nothing behind
        for name in [m for m, owner in reg.method_plugin.items() if not self.pm.has_plugin(owner)]:
            del reg.methods[name], reg.method_plugin[name]
        for owner in [o for o in reg.options if not self.pm.has_plugin(o)]:
            del reg.options[owner]
        reg.compositions = [c for c in reg.compositions if c.addon in reg.methods]

    # -- introspection ----------------------------------------------------------------------------

    def loaded(self) -> list[tuple[str, object]]:
        """``(name, plugin)`` of every registered plugin, in registration order (blocked names left out)."""
        return [(name, plugin) for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.loaded()):
            version, source = self.versions.get(name, ("unknown", "third-party"))
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            methods = tuple(m for m, owner in self.registry.method_plugin.items() if owner == name)
            infos.append(PluginInfo(name, version, source, hooks, methods))
        return infos

    def resolve_methods(self, names: Iterable[str]) -> list[str]:
        """Validate the selected methods and add the default base of add-on methods selected alone."""
        registry = self.registry
        methods: list[str] = []
        for name in names:
            if name not in registry.methods:
                raise RobustDistillError(self._unknown_method(name))
            if name not in methods:
                methods.append(name)
        attackers = self.attack_owners(methods)
        if len(attackers) > 1:
            raise RobustDistillError(f"plugins {' and '.join(attackers)} both run an attack; select one base method "
                                     "(e.g. --plugin rslad --plugin igdm)")
        if not attackers:
            bases = {registry.methods[m].default_base for m in methods} - {None}
            if len(bases) > 1:
                raise RobustDistillError(f"the selected plugins need different base methods "
                                         f"({', '.join(sorted(bases))}); select one base method explicitly")
            if bases:
                methods.insert(0, bases.pop())
        return methods

    def _unknown_method(self, name: str) -> str:
        if self.pm.is_blocked(name):
            return f"plugin {name!r} is blocked by ${BLOCK_ENV}; remove it from there to use it"
        if name in self.failed:
            return f"plugin {name!r} is installed but was not loaded: {self.failed[name]}"
        known = ", ".join(sorted(self.registry.methods))
        return (f"unknown plugin {name!r}; known plugins: {known} (third-party plugins are found through "
                f"the '{ENTRY_POINT_GROUP}' entry-point group; `robustdistill plugins` lists what is loaded)")

    def resolve_attack(self, methods: Iterable[str], requested: str | None, has_teacher: bool) -> str | None:
        """The training attack of a run: ``--attack``, else the base method's own (``None`` when no base method
        declares one)."""
        base = next(iter(self.attack_owners(methods)), None)
        declared = self.registry.methods[base].attack if base is not None else None
        if requested is not None and declared is None:
            raise RobustDistillError(f"--attack {requested}: the selected methods have no base method that takes a "
                                     "training attack (at, trades, ard, rslad, adaad do)")
        name = requested or declared
        if name is None:
            return None
        attack = self.registry.attacks.get(name)
        if attack is None:
            raise RobustDistillError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(self.registry.attacks))}")
        if attack.needs_teacher and not has_teacher:
            raise RobustDistillError(f"the attack {name!r} uses a teacher: pass --teacher CKPT")
        return name

    def attack_owners(self, methods: Iterable[str]) -> list[str]:
        """The selected methods whose plugin implements ``attack``."""
        owners = {self.registry.method_plugin[m]: m for m in methods}
        implementing = {impl.plugin_name for impl in self.pm.hook.attack.get_hookimpls()}
        return [method for plugin, method in owners.items() if plugin in implementing]

    def active_plugins(self, methods: Iterable[str]) -> list[str]:
        """The plugins of the selected methods, plus every plugin that registers no method."""
        selected = {self.registry.method_plugin[m] for m in methods}
        owners = set(self.registry.method_plugin.values())
        return [name for name, _ in self.loaded() if name in selected or name not in owners]

    def step_hooks(self, methods: Iterable[str]) -> "StepHooks":
        active = set(self.active_plugins(methods))
        inactive = [p for name, p in self.loaded() if name not in active]
        return StepHooks(self.pm, inactive)


class StepHooks:
    """Typed callers of the step and lifecycle hooks, restricted to the active plugins (built once per run)."""

    def __init__(self, pm: pluggy.PluginManager, inactive: list[object]) -> None:
        self._callers = {name: pm.subset_hook_caller(name, inactive) for name in STEP_HOOKS + LIFECYCLE_HOOKS}

    def _call(self, hook: str, **kwargs: Any) -> Any:
        try:
            return self._callers[hook](**kwargs)
        except RobustDistillError:
            raise
        except Exception as err:
            if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the engine names the fix
                raise
            plugin = _failing_plugin(err, self._callers[hook])
            raise PluginError(f"plugin {plugin!r} failed in hook {hook!r}: {type(err).__name__}: {err}") from err

    def teacher_forward(self, ctx: StepContext, x: Any, role: str) -> TeacherOutput:
        return self._call("teacher_forward", ctx=ctx, x=x, role=role)

    def input_gradient(self, ctx: StepContext, model: Any, x: Any, objective: Callable[[Any], Any],
                       create_graph: bool) -> Any:
        return self._call("input_gradient", ctx=ctx, model=model, x=x, objective=objective, create_graph=create_graph)

    def attack(self, ctx: StepContext) -> Any:
        return self._call("attack", ctx=ctx)

    def student_inputs(self, ctx: StepContext) -> dict[str, Any]:
        """Every active plugin's declared student inputs, in call order; one name must mean one tensor."""
        inputs: dict[str, Any] = {}
        for declared in self._call("student_inputs", ctx=ctx):
            for key, x in (declared or {}).items():
                if key in inputs and inputs[key] is not x:
                    raise RobustDistillError(f"two plugins declare different tensors as the student input {key!r}; "
                                             "a shared name must be the same tensor (e.g. ctx.x, ctx.x_adv)")
                inputs.setdefault(key, x)
        return inputs

    def loss(self, ctx: StepContext) -> list[LossTerm]:
        terms: list[LossTerm] = []
        for result in self._call("loss", ctx=ctx):
            if result is None:
                continue
            terms.extend(result if isinstance(result, (list, tuple)) else [result])
        names = [t.name for t in terms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise RobustDistillError(f"two loss terms are named {', '.join(map(repr, twice))}; each term is logged by "
                                     "name, so the composed plugins must name their terms apart")
        return self.reweighted(ctx, terms)

    def reweighted(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        """``terms`` with the per-sample weights of the ``sample_weights`` hooks applied (unchanged without any)."""
        if not self._callers["sample_weights"].get_hookimpls():
            return terms
        weights: dict[str, Any] = {}
        for result in self._call("sample_weights", ctx=ctx, terms=terms):
            for name, w in (result or {}).items():
                weights[name] = weights[name] * w if name in weights else w
        by_name = {t.name: t for t in terms}
        unknown = sorted(set(weights) - set(by_name))
        if unknown:
            raise RobustDistillError(f"sample_weights names loss terms that this step does not have: {unknown} "
                                     f"(its terms: {sorted(by_name)})")
        out = []
        for term in terms:
            if term.name in weights:
                samples = weights[term.name] * term.samples()
                term = LossTerm(term.name, samples.mean(), weight=term.weight, per_sample=samples)
            out.append(term)
        return out

    def event(self, hook: str, **kwargs: Any) -> None:
        self._call(hook, **kwargs)


def _newer(version: str, than: str) -> bool:
    """Whether plugin-API ``version`` (``"2.1"``) is newer than ``than``; an unreadable version counts as newer."""
    try:
        return tuple(int(p) for p in version.split(".")[:2]) > tuple(int(p) for p in than.split(".")[:2])
    except ValueError:
        return True


def _failing_plugin(err: BaseException, caller: pluggy.HookCaller) -> str:
    """Name the plugin whose hook function (or, failing that, whose module) is in the traceback."""
    impls = caller.get_hookimpls()
    codes = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in impls}
    modules = {impl.function.__module__: impl.plugin_name for impl in impls}
    culprit = "unknown"
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code in codes:
            return codes[frame.f_code]
        culprit = modules.get(frame.f_globals.get("__name__"), culprit)
        tb = tb.tb_next
    return culprit


def load_plugins(autoload: bool | None = None) -> PluginHost:
    """Build a :class:`PluginHost`: built-ins always, third-party plugins unless autoload is disabled.

    ``autoload=None`` reads ``$ROBUSTDISTILL_DISABLE_PLUGIN_AUTOLOAD`` (set it to ``1`` to disable).
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
    host = PluginHost()
    host.load_builtins()
    if autoload:
        host.load_entry_points()
    host.build_registry()
    return host
