"""Trainers that misbehave on purpose, for the fault-injection tests (`--trainer fault_trainers:NAME`)."""

from __future__ import annotations

import math
import os
import sys
import time


def trivial(config, report):
    """No work at all: measures hpo's own per-trial cost."""
    report(1, {"score": float(config.get("x", 0))})
    return {"score": float(config.get("x", 0))}


def slow(config, report):
    """A few seconds per trial, so a test can kill or interrupt it mid-trial."""
    for step in range(1, int(config.get("epochs", 4)) + 1):
        time.sleep(float(config.get("sleep", 1.0)))
        report(step, {"score": step * float(config.get("x", 1))})


def held(config, report):
    """As `slow`, but after its first report a trial waits for as long as the file `hold` exists, and says so in a
    file `hold.<pid>`: a test holds trials mid-run (to kill or stop them there) however slow the machine, instead of
    racing a sleep."""
    hold = config["hold"]
    for step in range(1, int(config.get("epochs", 3)) + 1):
        time.sleep(float(config.get("sleep", 0.2)))
        report(step, {"score": step * float(config.get("x", 1))})
        if step == 1:
            from contract_trainers import wait_while

            wait_while(hold)


def faulty(config, report):
    """Fails in a way chosen by the `mode` parameter."""
    mode = config["mode"]
    if mode == "ok":
        report(1, {"score": 1.0})
    elif mode == "error":
        raise ValueError("boom: bad config")
    elif mode == "nan":
        report(1, {"score": 0.5, "train_loss": math.nan})
        report(2, {"score": 0.6, "train_loss": 1.0})  # never reached: the trial ends at the NaN
    elif mode == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    elif mode == "exit0":  # a script turned into a function: reports, then ends the way its script did
        report(1, {"score": 0.25})
        sys.exit(0)
    elif mode == "exit1":
        report(1, {"score": 0.5})
        sys.exit(1)
    elif mode == "hostmem":
        raise MemoryError()
    elif mode == "usage":  # argparse's way to fail: the usage first, the reason last
        raise ValueError("usage: train.py [-h] [--lr LR] [--sleep SLEEP] [--epochs EPOCHS] [--batch-size BATCH]"
                         " [--hidden HIDDEN]\ntrain.py: error: argument --sleep: invalid int value: 'x'")
    report(2, {"score": 2.0, "pid": float(os.getpid())})


def points(config, report):
    """A grid of good and bad points, each ending the way real trainers end (`point` picks one)."""
    point = config["point"]
    if point == "exit0":  # a script turned into a function that gives up before its first report
        sys.exit(0)
    if point == "sigkill":  # what the kernel's OOM killer does to the process that holds the memory
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if point == "misspelled":  # logs its metric under another name
        report(1, {"Score": 0.5, "loss": 1.0})
        return None
    report(1, {"score": 0.5})
    report(2, {"score": 1.0 if point == "good" else 2.0})
    return None


def steps(config, report):
    """Reports at steps out of order, and one step twice (`order`: e.g. "3,1,2" or "1,2,2")."""
    for i, step in enumerate(int(s) for s in str(config["order"]).split(",")):
        report(step, {"score": float(step) / 10 + i / 100})
