"""The pluggy markers of robustdistill's hooks (``@robustdistill.hookimpl``); importable without torch."""
import pluggy

PROJECT = "robustdistill"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
