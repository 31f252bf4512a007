"""Small, deterministic trainers for the engine contract suite (`--trainer contract_trainers:NAME`).

No torch, no data: each "epoch" is a short sleep and one `report`. They follow the
trainer contract: `report(step, metrics)` once per epoch, steps 1..epochs, and an
exception raised by `report` (the engine stopping the trial) is left to propagate.
"""

from __future__ import annotations

import os
import signal
import time


def score(x: float, step: int, epochs: int) -> float:
    """The curve every trial follows: rises with the step, scaled by `x`.

    A trial with a larger `x` is ahead at every step (so Hyperband has clear losers to
    stop), and the value at the last step differs from the value at the first (so a
    trial's value can be told apart from its first report).
    """
    return round(float(x) * (step / epochs) + 0.001 * step, 6)


def curve(config, report):
    """`epochs` reports of `score`, `sleep` seconds apart (default 0.05 s: concurrent trials overlap).

    With a `hold` path, a trial that finds that file after its first report waits while it exists, and says so in
    `hold.<pid>`: a test acts on trials mid-run (Ctrl-C) however slow the machine. With `hold_from: N` too, only
    the trials from the N+1-th on (in the order they start: tickets `hold.ticket<i>`) wait."""
    epochs = int(config["epochs"])
    pause = float(config.get("sleep", 0.05))
    hold = config.get("hold")
    if hold and "hold_from" in config and _ticket(hold) < int(config["hold_from"]):
        hold = None
    for step in range(1, epochs + 1):
        time.sleep(pause)
        report(step, {"score": score(config["x"], step, epochs)})
        if step == 1 and hold:
            wait_while(hold)


def wait_while(hold: str) -> None:
    """While the file `hold` exists, wait, having said so in `hold.<pid>` (a test's signal lands mid-trial)."""
    if os.path.exists(hold):
        with open(f"{hold}.{os.getpid()}", "w"):
            pass
        while os.path.exists(hold):
            time.sleep(0.05)


def _ticket(hold: str) -> int:
    """This trial's place among the trials that started (the first free `hold.ticket<i>`, made atomically)."""
    n = 0
    while True:
        try:
            os.close(os.open(f"{hold}.ticket{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


def _die(report) -> None:
    report(1, {"score": 0.0})
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL cannot be caught


def die_once(config, report):
    """The first trial to get here (whoever creates the file `marker` first) kills its own process."""
    try:
        fd = os.open(config["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return curve(config, report)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    _die(report)


def die_always(config, report):
    """Every trial kills its own process after its first report: a worker that can never finish a trial."""
    _die(report)


def raise_always(config, report):
    """Every trial fails in the trainer itself."""
    raise ValueError("contract: this trainer always fails")


def curve_model(config, report):
    """`curve`, then the trained "model": a torch Linear whose output is the trial's own `x`, so which
    trial's model was kept or registered shows in any prediction. Returned, as a `train` may."""
    import torch

    curve(config, report)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(float(config["x"]))
    return model


def curve_untraceable(config, report):
    """`curve`, then a model that torch.export cannot trace (its forward branches on a tensor's value), handed
    over with an input example: hpo must fall back to pickling it."""
    import numpy as np
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self, x: float):
            super().__init__()
            self.x = torch.nn.Parameter(torch.tensor([x]))

        def forward(self, rows):
            if rows.sum() > 1e9:  # data-dependent control flow
                return rows[:, :1] * 0
            return rows[:, :1] * 0 + self.x

    curve(config, report)
    report.model(Branchy(float(config["x"])), input_example=np.zeros((2, 1), dtype=np.float32))


def two_objectives(config, report):
    """`curve`'s score (to maximise) and a cost (to minimise) that is lowest at x = 0.5: a trial with x < 0.5
    is beaten on both by the one at 1 - x, so the Pareto front is the trials with x >= 0.5."""
    epochs = int(config["epochs"])
    for step in range(1, epochs + 1):
        time.sleep(float(config.get("sleep", 0.05)))
        report(step, {"score": score(config["x"], step, epochs),
                      "cost": round((float(config["x"]) - 0.5) ** 2 + 0.01 * (epochs - step), 6)})


def cost_returned(config, report):
    """`two_objectives`, but the cost only comes back in train()'s return value, never through report()."""
    curve(config, report)
    return {"cost": round((float(config["x"]) - 0.5) ** 2, 6)}
