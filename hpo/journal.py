"""The Optuna journal file, made crash-consistent: no record is ever appended after a partial one.

A journal is only as durable as its recovery rule. A record cut short — a writer
SIGKILLed mid-write, a full disk, a power cut — is a trailing line without its
newline. Optuna skips such a line at the end of the file, but a record appended
after it glues onto it, and from then on Optuna cannot read the study at all.
So before every append, under the journal's lock, a partial tail is cut off and
kept aside in `JOURNAL.partial` for inspection; a write that fails (ENOSPC) is
rolled back to the last complete record before the error goes up.

Durability: every record is in the kernel's page cache (seen by every reader, kept
if the process is killed) when `append_logs` returns. Records that change what a
trial or study *is* (created, state and values, study attributes) are also
fsynced, which carries every record written before them to the disk. Records in
between (per-step intermediate values, trial params and attributes, and trials
enqueued WAITING) are not fsynced on their own: a power cut can lose those of a
trial still RUNNING, which the next `hpo run` repairs (FAILED, run again) as it
does after any crash, and queued trials, which it enqueues again. This keeps a
27-epoch trial at 2 fsyncs (taken, finished) instead of about 36.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

CHUNK = 64 * 1024

# Op codes (optuna.storages.journal._storage.JournalOperation) whose records need no fsync of
# their own: SET_TRIAL_PARAM, SET_TRIAL_INTERMEDIATE_VALUE, SET_TRIAL_USER_ATTR, SET_TRIAL_SYSTEM_ATTR.
UNSYNCED_OPS = frozenset({5, 7, 8, 9})
CREATE_TRIAL, WAITING = 4, 4  # JournalOperation.CREATE_TRIAL; TrialState.WAITING


def needs_sync(log: dict[str, Any]) -> bool:
    """Whether a record must reach the disk before `append_logs` returns. A trial created WAITING (the
    budget's queue) needs no fsync either: if a power cut loses it, the next run enqueues it again."""
    op = log.get("op_code")
    return op not in UNSYNCED_OPS and not (op == CREATE_TRIAL and log.get("state") == WAITING)


class FlockLock:
    """The journal's write lock, as `fcntl.flock` on a side file.

    Optuna's own file locks are files that exist while held: a worker SIGKILLed
    while holding one blocks every other writer. The kernel drops an flock when
    its holder dies, whatever the signal. (Local disks; use an RDB across machines.)
    """

    def __init__(self, path: str):
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def cut_partial_tail(path: str) -> int:
    """Truncate a trailing record that has no newline; keep it in `path.partial`. Returns the bytes cut.

    Call it with the journal's lock held: then no writer is half-way through a record.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        end = size
        while end > 0:  # back to the last newline: the end of the last complete record
            start = max(0, end - CHUNK)
            f.seek(start)
            found = f.read(end - start).rfind(b"\n")
            if found >= 0:
                end = start + found + 1
                break
            end = start
        f.seek(end)
        tail = f.read()
        with open(path + ".partial", "ab") as aside:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            aside.write(f"# {stamp}: {len(tail)} bytes cut from the end of {os.path.basename(path)}\n".encode())
            aside.write(tail + b"\n")
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return len(tail)


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's JournalFileBackend whose appends never follow, nor leave, a partial record."""

    def __init__(self, file_path: str, lock_obj: FlockLock) -> None:
        super().__init__(file_path, lock_obj=lock_obj)
        with get_lock_file(self._lock):
            cut_partial_tail(self._file_path)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            cut_partial_tail(self._file_path)
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                before = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:  # unbuffered: a failed write is seen here, not at some later flush
                        view = view[os.write(fd, view):]
                    if any(needs_sync(log) for log in logs):
                        os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, before)  # needs no space: the study stays readable
                    raise
            finally:
                os.close(fd)
