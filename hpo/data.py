"""Datasets as in-memory tensors: digits (bundled, no download), torchvision sets, and
`synthetic_cifar10` (CIFAR-10's shapes from a seed: a throughput workload any machine has).

A worker loads a dataset once and keeps it between trials (`load` is cached).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
SYNTHETIC = {"synthetic_cifar10": ((3, 32, 32), 50_000, 10_000)}  # shape, train, validation
NAMES = ("digits", *TORCHVISION, *SYNTHETIC)


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 or float, N x C x H x W
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    scale: float  # divide inputs by this to get [0, 1]
    fingerprint: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def channels_last(self) -> bool:
        """Whether the raw images are H x W x C (CIFAR-10), as their loader gives them."""
        return self.name in ("cifar10", "synthetic_cifar10")

    def raw(self, x: torch.Tensor) -> np.ndarray:
        """Stored rows back in the raw form their loader gives (what a served model is fed): digits as
        `load_digits().data` rows (float64, 64 values 0-16), torchvision sets as uint8 images."""
        x = x.detach().cpu()
        if self.name == "digits":
            return x.reshape(len(x), -1).numpy().astype(np.float64)
        if self.channels_last:
            return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
        return np.ascontiguousarray(x[:, 0].numpy())


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    # A fixed, stratified 80/20 split so every trial sees the same validation set.
    rng = np.random.default_rng(0)
    val = np.zeros(len(y), dtype=bool)
    for cls in range(10):
        idx = np.flatnonzero(y == cls)
        val[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    return Dataset(
        "digits",
        torch.from_numpy(x[~val]), torch.from_numpy(y[~val]),
        torch.from_numpy(x[val]), torch.from_numpy(y[val]),
        10, 16.0, _fingerprint(x, y, val),
    )


def _torchvision(name: str, data_dir: str) -> Dataset:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name])
    root = Path(data_dir).expanduser()
    splits = [cls(str(root), train=t, download=True) for t in (True, False)]

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)

    (xt, yt), (xv, yv) = arrays(splits[0]), arrays(splits[1])
    return Dataset(
        name, torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xv), torch.from_numpy(yv),
        10, 255.0, _fingerprint(yt[:1000], yv[:1000], xt[:64]),
    )


def _synthetic(name: str) -> Dataset:
    """Fixed images from seed 0: each class a random prototype, each image half prototype plus a quarter of noise
    (uint8, so it is as heavy as the real set on the device and learnable: accuracy rises above 10 %)."""
    shape, n_train, n_val = SYNTHETIC[name]
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(10, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, size=n_train + n_val, dtype=np.int64)
    x = (prototypes[y] >> 1) + (rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8) >> 2)
    return Dataset(
        name, torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train]), torch.from_numpy(x[n_train:]),
        torch.from_numpy(y[n_train:]), 10, 255.0, _fingerprint(prototypes, y),
    )


@functools.lru_cache(maxsize=4)
def load(name: str = "digits", data_dir: str = "data") -> Dataset:
    """Load a dataset by name; cached, so a long-lived worker loads it once."""
    if name == "digits":
        return _digits()
    if name in TORCHVISION:
        return _torchvision(name, data_dir)
    if name in SYNTHETIC:
        return _synthetic(name)
    raise ValueError(f"dataset: unknown {name!r}; one of {', '.join(NAMES)}")
