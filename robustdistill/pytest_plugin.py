"""pytest fixtures for plugin authors, loaded through the ``pytest11`` entry point of robustdistill.

* ``rd_host`` — a factory: ``rd_host(my_plugin, ...)`` is :func:`robustdistill.testing.plugin_host`.
* ``rd_recorder`` — a :class:`robustdistill.testing.HookRecorder`; pass it to ``rd_host`` to record hook calls.
* ``rd_train`` — a factory: ``rd_train(host, ["my-method"], *options)`` trains one epoch of the real engine
  on the built-in ``synthetic`` dataset into a fresh temporary directory and returns the run.

Third-party plugins are not autoloaded into these hosts: a test sees the built-ins and what it passes.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture
def rd_host() -> Callable[..., Any]:
    from robustdistill.testing import plugin_host

    return plugin_host


@pytest.fixture
def rd_recorder() -> Any:
    from robustdistill.testing import HookRecorder

    return HookRecorder()


@pytest.fixture
def rd_train(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    from robustdistill.testing import train_run

    def train(host: Any, methods: list[str], *args: str, **overrides: Any) -> Any:
        return train_run(host, methods, tmp_path_factory.mktemp("run") / "run", *args, **overrides)

    return train
