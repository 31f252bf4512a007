"""The benchmark's tasks: a trial's whole learning curve from a surrogate, in one call.

- `lcbench:<OpenML task id>`: YAHPO Gym's LCBench surrogate (34 OpenML tasks, 7 hyperparameters, `epoch`
  1-52 as the fidelity). It is evaluated here with `onnxruntime` on YAHPO's own `model.onnx`, not through
  `yahpo-gym` (which pins numpy<2 and ConfigSpace 0.6.1, so it cannot share hpo's environment). The input
  is built as yahpo_gym's `BenchmarkSet._config_to_xs` builds it: `x_cat` = the OpenML task id through
  `encoding.json` (int32, shape [n, 1]); `x_cont` = (epoch, batch_size, learning_rate, momentum,
  weight_decay, num_layers, max_units, max_dropout) in their raw units (float32, shape [n, 8]; the ONNX graph
  scales them itself). Outputs, in yahpo's `y_names` order: time (cumulative seconds to the end of the
  epoch), val_accuracy (%), val_cross_entropy, val_balanced_accuracy, test_cross_entropy,
  test_balanced_accuracy. The data is read from $YAHPO_DATA (default ../shared/data/yahpo_data next to the
  repository), never copied into it.
- `hartmann6`: a synthetic multi-fidelity function that needs no data (for CI): the 6-d Hartmann function
  with Kandasamy et al.'s fidelity (BOCA, ICML 2017: alpha_i' = alpha_i - 0.1 (1 - z), z = epoch / 27),
  scaled to a "val_accuracy" in percent (100 * H / 3.32237; 100 is its known optimum at z = 1). An epoch
  of a configuration costs 1 + 9 * x6 simulated seconds, so the time axis differs from the epoch axis.

`Task.curve(config)` gives (val_accuracy per epoch, seconds per epoch) for epochs 1..max_epochs.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "yahpo_data"
LC_CONT = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units",
           "max_dropout")
LC_INT = ("batch_size", "num_layers", "max_units")  # sampled as floats by every contender, rounded here


def data_dir(given: str | os.PathLike | None = None) -> Path:
    return Path(given or os.environ.get("YAHPO_DATA") or DEFAULT_DATA)


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False  # int_uniform in the sweep (else a float, rounded by the surrogate where it is an int)

    def wandb(self) -> dict[str, Any]:
        if self.integer:
            return {"distribution": "int_uniform", "min": int(self.low), "max": int(self.high)}
        return {"distribution": "log_uniform_values" if self.log else "uniform", "min": self.low, "max": self.high}

    def from_unit(self, u: float) -> float:
        """[0, 1] -> the parameter (DEHB's vector space)."""
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        return int(round(min(max(v, self.low), self.high))) if self.integer else min(max(v, self.low), self.high)


LCBENCH_SPACE = (
    Param("batch_size", 16, 512, log=True),
    Param("learning_rate", 1e-4, 1e-1, log=True),
    Param("momentum", 0.1, 0.99),
    Param("weight_decay", 1e-5, 0.1),
    Param("num_layers", 1, 5, integer=True),
    Param("max_units", 64, 1024, log=True),
    Param("max_dropout", 0.0, 1.0),
)
HARTMANN_SPACE = tuple(Param(f"x{i}", 0.0, 1.0) for i in range(1, 7))

_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
                 [17, 8, 0.05, 10, 0.1, 14]])
_H_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
H_MAX = 3.32237


@dataclass(frozen=True)
class Task:
    name: str  # lcbench:3945 / hartmann6
    space: tuple[Param, ...]
    max_epochs: int
    min_iter: int  # W&B hyperband min_iter (eta 3): the rungs every Hyperband contender uses
    data: str | None = None

    @property
    def slug(self) -> str:
        return self.name.replace(":", "_")

    def curve(self, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(val_accuracy %, simulated seconds) for each epoch 1..max_epochs of this configuration."""
        return self.curves([config])[0]

    def curves(self, configs: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.name == "hartmann6":
            return [hartmann_curve(c, self.max_epochs) for c in configs]
        return lcbench_curves(self.name.split(":", 1)[1], configs, str(data_dir(self.data)), self.max_epochs)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {p.name: p.from_unit(float(rng.random())) for p in self.space}


def task(name: str, data: str | None = None) -> Task:
    if name == "hartmann6":
        return Task(name, HARTMANN_SPACE, 27, 1)
    tid = name.split(":", 1)[-1]
    if tid not in encoding(str(data_dir(data)))["OpenML_task_id"]:
        raise SystemExit(f"{name}: not an LCBench task id (see config_space.json)")
    return Task(f"lcbench:{tid}", LCBENCH_SPACE, 52, 2, str(data_dir(data)))


def hartmann_curve(c: dict[str, Any], epochs: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([float(c[f"x{i}"]) for i in range(1, 7)])
    z = np.arange(1, epochs + 1) / epochs
    alpha = _H_ALPHA[None, :] - 0.1 * (1 - z[:, None])  # [epochs, 4]
    inner = np.exp(-((_H_A * (x[None, :] - _H_P) ** 2).sum(axis=1)))  # [4]
    acc = 100.0 * (alpha * inner[None, :]).sum(axis=1) / H_MAX
    return acc, np.full(epochs, 1.0 + 9.0 * x[5])


@functools.lru_cache(maxsize=4)
def encoding(folder: str) -> dict[str, Any]:
    return json.loads((Path(folder) / "lcbench" / "encoding.json").read_text())


@functools.lru_cache(maxsize=4)
def session(folder: str) -> Any:
    import onnxruntime as rt

    path = Path(folder) / "lcbench" / "model.onnx"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; set YAHPO_DATA (or --yahpo-data) to the folder holding lcbench/")
    opts = rt.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # a 2-core machine runs several at once
    return rt.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def lcbench_curves(tid: str, configs: list[dict[str, Any]], folder: str,
                   epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    sess = session(folder)
    code = encoding(folder)["OpenML_task_id"][tid]
    rows = []
    for c in configs:
        vals = [float(round(c[n])) if n in LC_INT else float(c[n]) for n in LC_CONT[1:]]
        rows.extend([e, *vals] for e in range(1, epochs + 1))
    x_cont = np.asarray(rows, dtype=np.float32)
    x_cat = np.full((len(rows), 1), code, dtype=np.int32)
    ins = sess.get_inputs()
    out = sess.run(None, {ins[0].name: x_cat, ins[1].name: x_cont})[0].reshape(len(configs), epochs, -1)
    result = []
    for o in out:
        cum = np.maximum.accumulate(np.maximum(o[:, 0].astype(float), 0.0))  # cumulative seconds, never back
        dt = np.maximum(np.diff(cum, prepend=0.0), 1e-3)
        result.append((o[:, 1].astype(float), dt))
    return result


def reference(t: Task, n: int = 5000, seed: int = 12345) -> dict[str, float]:
    """The task's best val_accuracy (over n random configurations at every epoch; the benchmark takes the
    larger of this and anything a contender found) and the mean seconds of a full training."""
    if t.name == "hartmann6":
        rng = np.random.default_rng(seed)
        curves = [hartmann_curve(t.sample(rng), t.max_epochs) for _ in range(2000)]
        return {"best": 100.0, "full_time": float(np.mean([dt.sum() for _, dt in curves])),
                "median_acc": float(np.median([acc[-1] for acc, _ in curves]))}
    rng = np.random.default_rng(seed)
    best, times, finals = -np.inf, [], []
    for _ in range(n // 500):
        for acc, dt in t.curves([t.sample(rng) for _ in range(500)]):
            best = max(best, float(acc.max()))
            times.append(float(dt.sum()))
            finals.append(float(acc[-1]))
    return {"best": best, "full_time": float(np.mean(times)), "median_acc": float(np.median(finals))}
