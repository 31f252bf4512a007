"""What it takes to reproduce a trial: interpreter, torch and CUDA versions, host, git commit, dataset."""

from __future__ import annotations

import platform
from pathlib import Path
import subprocess
import sys
from typing import Any, Mapping

from hpo import keys


def environment_tags() -> dict[str, str]:
    """Interpreter, torch and CUDA versions, the host."""
    tags = {keys.PYTHON: platform.python_version(), keys.HOST: platform.node()}
    if "torch" in sys.modules:
        import torch

        tags[keys.TORCH] = torch.__version__
        tags[keys.CUDA] = str(torch.version.cuda or "none")
    return tags


def git_sha(cwd: str | None = None) -> str | None:
    """The commit of the working directory, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def snapshot(argv: list[str], cwd: str | None = None) -> dict[str, str]:
    """The sweep's environment, as files for the parent run: `requirements.txt` (every installed
    distribution, pinned), `environment.json` (interpreter, platform, hpo/torch/CUDA versions, GPU driver, git
    commit and whether the checkout is dirty, the command line with passwords masked) and, when the
    checkout is dirty, `git.diff`. Read without importing torch or initialising CUDA."""
    import importlib.metadata as md
    import json
    import shlex

    from hpo.redact import mask

    pins = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in pins:
            pins[name.lower()] = f"{name}=={dist.version}"
    sha = git_sha(cwd)
    diff = _git(["diff", "HEAD"], cwd) if sha else None
    env = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "host": platform.node(), "hpo": _version(md, "hpo"), "torch": _version(md, "torch"), "cuda": _torch_cuda(),
        "gpu_driver": _gpu_driver(), "git_sha": sha, "git_dirty": bool(diff),
        "command": shlex.join(mask(a) for a in argv), "cwd": cwd or "",
    }
    out = {"requirements.txt": "\n".join(sorted(pins.values(), key=str.lower)) + "\n",
           "environment.json": json.dumps(env, indent=2) + "\n"}
    if diff:
        out["git.diff"] = diff[:1_000_000]
    return out


def _version(md: Any, name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _torch_cuda() -> str | None:
    """The CUDA version torch was built with, read from torch/version.py (importing torch takes seconds)."""
    import importlib.util
    import re

    try:
        found = importlib.util.find_spec("torch")
        text = (Path(found.origin).parent / "version.py").read_text() if found and found.origin else ""
    except (OSError, ImportError, ValueError):
        return None
    match = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return match[1] if match else None


def _git(args: list[str], cwd: str | None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _gpu_driver() -> str | None:
    """The NVIDIA driver's version, from NVML (nvidia-ml-py); None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver here
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001
        return None
    finally:
        pynvml.nvmlShutdown()


def dataset_tags(config: Mapping[str, Any], trainer_ref: str | None) -> dict[str, str]:
    """Name and fingerprint of the built-in trainer's dataset (already cached by the trial)."""
    if trainer_ref or "hpo.data" not in sys.modules:
        return {}
    from hpo import data, train

    name = str(config.get("dataset", train.DEFAULTS["dataset"]))
    try:
        ds = data.load(name, str(config.get("data_dir", train.DEFAULTS["data_dir"])))
    except Exception:  # noqa: BLE001 - the trial already failed on it
        return {keys.DATASET: name}
    return {keys.DATASET: name, keys.DATASET_FINGERPRINT: ds.fingerprint}
