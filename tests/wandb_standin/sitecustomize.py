"""One knob of wandb's in-process sweep agent, for processes started against the W&B stand-in server.

Only when $HPO_WANDB_STANDIN_HEARTBEAT is set (tests/test_wandb_server.py sets it, with
this folder on PYTHONPATH): once `wandb.agents.pyagent` is imported, its
`Agent.HEARTBEAT_SLEEP_SECONDS` (5 s; "Tests may set to 0 to avoid wall-clock waits",
says wandb) becomes that many seconds, so runs start and stops arrive within a fraction
of a second instead of up to 5 s later. Nothing else of wandb is changed: the agent,
its GraphQL calls, the runs and their file_stream are wandb's own, talking to the
stand-in through WANDB_BASE_URL.

wandb is not imported here (a post-import hook), so processes that never use it pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_MODULE = "wandb.agents.pyagent"


class _PatchPyagent(importlib.abc.MetaPathFinder):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)  # find the real module, once
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, seconds = spec.loader, self.seconds

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                module.Agent.HEARTBEAT_SLEEP_SECONDS = seconds

        spec.loader = Loader()
        return spec


_seconds = os.environ.get("HPO_WANDB_STANDIN_HEARTBEAT")
if _seconds:
    sys.meta_path.insert(0, _PatchPyagent(float(_seconds)))
