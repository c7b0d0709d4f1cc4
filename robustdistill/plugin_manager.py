"""Loading plugins, the registry they fill, and the typed facade the engine calls hooks through."""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy
import torch
from torch import Tensor, nn

from . import hookspecs
from .registry import Method, Registry, RobustDistillError
from .step import LossTerm, StepContext, TeacherOutput

ENTRY_POINT_GROUP = "robustdistill"
DISABLE_AUTOLOAD_ENV = "ROBUSTDISTILL_DISABLE_PLUGIN_AUTOLOAD"
DIST_NAME = "robustdistill"
CORE_PLUGIN = "core"
BUILTIN_PLUGINS: dict[str, str] = {
    CORE_PLUGIN: "robustdistill.plugins.core",
    "natural": "robustdistill.plugins.natural",
    "at": "robustdistill.plugins.at",
    "trades": "robustdistill.plugins.trades",
    "ard": "robustdistill.plugins.ard",
    "rslad": "robustdistill.plugins.rslad",
    "adaad": "robustdistill.plugins.adaad",
    "igdm": "robustdistill.plugins.igdm",
    "igam": "robustdistill.plugins.igam",
    "rrm": "robustdistill.plugins.rrm",
    "gradnorm": "robustdistill.plugins.gradnorm",
    "edgereg": "robustdistill.plugins.edgereg",
    "pag": "robustdistill.plugins.pag",
}
STEP_HOOKS = ("teacher_forward", "input_gradient", "attack", "student_inputs", "loss")
LIFECYCLE_HOOKS = ("train_start", "epoch_start", "step_end", "epoch_end", "train_end")


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; the CLI goes on without it."""


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


class PluginHost:
    """A pluggy manager with robustdistill's hook specs, the loaded plugins and their registry."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.versions: dict[str, tuple[str, str]] = {}
        self.registry = Registry()

    # -- loading ----------------------------------------------------------------------------------

    def register(self, plugin: object, name: str, version: str, source: str) -> None:
        """Register a plugin object or module under ``name``."""
        self.pm.register(plugin, name=name)
        self.versions[name] = (version, source)

    def load_entry_points(self, third_party: bool) -> None:
        """Load plugins from the ``robustdistill`` entry-point group; a broken one only warns."""
        for dist in metadata.distributions():
            dist_name = (dist.metadata["Name"] or "").lower()
            builtin = dist_name == DIST_NAME
            if not builtin and not third_party:
                continue
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                    continue
                try:
                    plugin = ep.load()
                    self.register(plugin, ep.name, dist.version, "built-in" if builtin else "third-party")
                except Exception as err:  # a third-party plugin must not take the CLI down
                    if self.pm.has_plugin(ep.name):
                        self.pm.unregister(name=ep.name)
                    warnings.warn(f"robustdistill: skipped plugin {ep.name!r} from {dist.metadata['Name']} "
                                  f"{dist.version}: {type(err).__name__}: {err}", PluginWarning, stacklevel=2)

    def load_builtins(self) -> None:
        """Register the built-in plugins the entry points did not provide (e.g. running from a source tree)."""
        from . import __version__
        for name, module in BUILTIN_PLUGINS.items():
            if not self.pm.has_plugin(name):
                self.register(importlib.import_module(module), name, __version__, "built-in")

    # -- registry ---------------------------------------------------------------------------------

    def _call_each(self, hook: str, register: Callable[[str], Callable[[Any], None]]) -> None:
        """Call one registration hook per plugin with ``register(plugin_name)`` as its callback.

        A third-party plugin that raises is unregistered with a warning; a built-in one is a bug and raises.
        """
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(register=register(impl.plugin_name))
            except Exception as err:
                if self.versions.get(impl.plugin_name, ("", "third-party"))[1] == "built-in" \
                        or isinstance(err, RobustDistillError):
                    raise
                self.pm.unregister(name=impl.plugin_name)
                warnings.warn(f"robustdistill: skipped plugin {impl.plugin_name!r}: {hook} raised "
                              f"{type(err).__name__}: {err}", PluginWarning, stacklevel=2)

    def build_registry(self) -> None:
        """Run the registration hooks, remembering which plugin registered what."""
        reg = self.registry = Registry()

        def add_method(owner: str) -> Callable[[Method], None]:
            def add(method: Method) -> None:
                if method.name in reg.methods:
                    raise RobustDistillError(f"method {method.name!r} is registered by both "
                                             f"{reg.method_plugin[method.name]!r} and {owner!r}")
                reg.methods[method.name] = method
                reg.method_plugin[method.name] = owner
            return add

        self._call_each("register_methods", add_method)
        self._call_each("register_options", lambda owner: reg.options.setdefault(owner, []).append)
        self._call_each("register_models", lambda owner: reg.models.append)
        self._call_each("register_datasets", lambda owner: lambda e: reg.datasets.__setitem__(e.name, e))
        self._call_each("register_eval_attacks", lambda owner: lambda e: reg.eval_attacks.__setitem__(e.name, e))

    # -- introspection ----------------------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin()):
            version, source = self.versions.get(name, ("unknown", "third-party"))
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            methods = tuple(m for m, owner in self.registry.method_plugin.items() if owner == name)
            infos.append(PluginInfo(name, version, source, hooks, methods))
        return infos

    def active_plugins(self, methods: Iterable[str]) -> list[str]:
        """The plugins of the selected methods, plus every plugin that registers no method."""
        selected = {self.registry.method_plugin[m] for m in methods}
        owners = set(self.registry.method_plugin.values())
        return [name for name, _ in self.pm.list_name_plugin() if name in selected or name not in owners]

    def step_hooks(self, methods: Iterable[str]) -> "StepHooks":
        active = set(self.active_plugins(methods))
        inactive = [p for name, p in self.pm.list_name_plugin() if name not in active]
        return StepHooks(self.pm, inactive)


class StepHooks:
    """Typed callers of the step and lifecycle hooks, restricted to the active plugins (built once per run)."""

    def __init__(self, pm: pluggy.PluginManager, inactive: list[object]) -> None:
        self._callers = {name: pm.subset_hook_caller(name, inactive) for name in STEP_HOOKS + LIFECYCLE_HOOKS}

    def plugins_implementing(self, hook: str) -> list[str]:
        return [impl.plugin_name for impl in self._callers[hook].get_hookimpls()]

    def _call(self, hook: str, **kwargs: Any) -> Any:
        try:
            return self._callers[hook](**kwargs)
        except (RobustDistillError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:
            plugin = _failing_plugin(err, self._callers[hook])
            raise PluginError(f"plugin {plugin!r} failed in hook {hook!r}: {type(err).__name__}: {err}") from err

    def teacher_forward(self, ctx: StepContext, x: Tensor) -> TeacherOutput:
        return self._call("teacher_forward", ctx=ctx, x=x)

    def input_gradient(self, ctx: StepContext, model: nn.Module, x: Tensor,
                       objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
        return self._call("input_gradient", ctx=ctx, model=model, x=x, objective=objective, create_graph=create_graph)

    def attack(self, ctx: StepContext) -> Tensor | None:
        return self._call("attack", ctx=ctx)

    def student_inputs(self, ctx: StepContext) -> dict[str, Tensor]:
        """Every active plugin's declared student inputs; one name must mean one tensor."""
        inputs: dict[str, Tensor] = {}
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
        return terms

    def event(self, hook: str, **kwargs: Any) -> None:
        self._call(hook, **kwargs)


class PluginError(RobustDistillError):
    """A plugin raised inside a hook."""


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
    host.load_entry_points(third_party=autoload)
    host.load_builtins()
    host.build_registry()
    return host

