"""The models the built-in trainer offers: mlp, cnn, resnet18."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NAMES = ("mlp", "cnn", "resnet18")


def mlp(shape: tuple[int, ...], classes: int, hidden: int, dropout: float) -> nn.Module:
    inputs = 1
    for d in shape:
        inputs *= d
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )


def cnn(shape: tuple[int, ...], classes: int, hidden: int, dropout: float) -> nn.Module:
    channels = shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(64 * 16, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )


def resnet18(shape: tuple[int, ...], classes: int, hidden: int, dropout: float) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet18(num_classes=classes)
    # Small images (8x8 to 32x32): a 3x3 stem without the max-pool keeps spatial size.
    net.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, classes))
    return net


def build(name: str, shape: tuple[int, ...], classes: int, hidden: int, dropout: float) -> nn.Module:
    """A fresh model by name."""
    makers = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}
    if name not in makers:
        raise ValueError(f"model: unknown {name!r}; one of {', '.join(NAMES)}")
    return makers[name](shape, classes, int(hidden), float(dropout))


class RawInput(nn.Module):
    """A trained network that takes raw inputs (as the dataset's own loader gives them: digits' rows of 64
    pixel values 0-16, torchvision's uint8 images, channels last for CIFAR) and returns class logits: the
    preprocessing travels inside the model that is logged and registered."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...], scale: float, channels_last: bool = False):
        super().__init__()
        self.net, self.shape, self.scale, self.channels_last = net, tuple(shape), float(scale), channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.channels_last:  # N x H x W x C -> N x C x H x W
            x = x.permute(0, 3, 1, 2)
        # x.shape[0], not -1: torch.export keeps the batch dimension dynamic, down to a single row.
        return self.net(x.reshape(x.shape[0], *self.shape) / self.scale)


@dataclass(frozen=True)
class StepPlan:
    """How a training step runs on a device: what pays for itself there, and nothing else."""

    amp: bool  # autocast (bf16 where supported): convolutions gain; a tiny MLP only gets extra casts
    fused: bool  # one fused optimizer kernel instead of one launch per parameter tensor
    channels_last: bool  # NHWC for convolutions under AMP (tensor cores), with cudnn.benchmark
    graphs: bool = False  # full batches replayed from one CUDA graph per trial (hpo.train_step): launches, not math


def step_plan(model: str, device: str, amp: bool = True, graphs: bool = True) -> StepPlan:
    """The built-in trainer's step on `device` ("cuda" / "cpu"). On a CPU nothing changes: the plain step."""
    cuda, conv = device == "cuda", model in ("cnn", "resnet18")
    return StepPlan(amp=cuda and conv and amp, fused=cuda, channels_last=cuda and conv, graphs=cuda and graphs)


def optimizer(name: str, params, lr: float, momentum: float, weight_decay: float,
              fused: bool = False, capturable: bool = False) -> torch.optim.Optimizer:
    """sgd / adam / adamw; `fused` (CUDA) steps every parameter in one kernel; `capturable`: Adam's step count
    lives on the device, so a CUDA graph's replays advance it (SGD keeps none)."""
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)
    adam = {**extra, **({"capturable": True} if capturable else {})}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **adam)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adam)
    raise ValueError(f"optimizer: unknown {name!r}; one of sgd, adam, adamw")
