"""How ``train`` hears SIGTERM and Ctrl-C: a request to checkpoint at the next step and stop (the end-to-end runs
are in tests/test_reliability.py)."""
import os
import signal
import time
from types import SimpleNamespace

import pytest

from robustdistill._loop import CheckpointClock


def clock():
    run = SimpleNamespace(config=SimpleNamespace(checkpoint_every=None, checkpoint_minutes=0.0),
                          dist=SimpleNamespace(world=1))
    return CheckpointClock(run)


def wait_for(condition):
    for _ in range(100):
        if condition():
            return
        time.sleep(0.01)


def test_sigterm_asks_for_a_checkpoint_at_the_next_step_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    c = clock()
    with c.stop_on_signals():
        assert not c.due(1)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: c.signal is not None)
        assert c.signal == "SIGTERM" and c.due(1) and c.stopping
        assert c.stop_at_epoch_end()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_same_ctrl_c_twice_is_one_request_and_a_later_second_one_stops_at_once(monkeypatch):
    c = clock()
    with c.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: c.signal is not None)
        os.kill(os.getpid(), signal.SIGINT)  # a terminal's Ctrl-C and a parent's forward of it
        time.sleep(0.05)
        assert c.signal == "SIGINT"
        monkeypatch.setattr(CheckpointClock, "REPEAT_AFTER", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
