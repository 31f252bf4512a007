"""Trials whose process is gone: found RUNNING in the study with nobody left to finish them."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo import keys

UNCLAIMED_GRACE_S = 20  # a worker names itself on a trial within milliseconds of taking it


def is_local_orphan(t: FrozenTrial, live_pids: set[int]) -> bool:
    """A RUNNING trial on this host whose process (worker, or controller for mirrored trials) is gone."""
    if t.state != TrialState.RUNNING:
        return False
    host, pid = t.user_attrs.get(keys.HOST), t.user_attrs.get(keys.PID)
    if host is None or pid is None:
        # Just taken by a worker (here or elsewhere) that has not said who it is yet.
        started = t.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > UNCLAIMED_GRACE_S
    if host != socket.gethostname():
        return False
    return pid not in live_pids and not alive(pid)


def alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
