"""What it takes to reproduce a trial: interpreter, torch and CUDA versions, host, git commit, dataset."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any, Mapping


def environment_tags() -> dict[str, str]:
    """Interpreter, torch and CUDA versions, the host."""
    tags = {"hpo.python": platform.python_version(), "hpo.host": platform.node()}
    if "torch" in sys.modules:
        import torch

        tags["hpo.torch"] = torch.__version__
        tags["hpo.cuda"] = str(torch.version.cuda or "none")
    return tags


def git_sha(cwd: str | None = None) -> str | None:
    """The commit of the working directory, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dataset_tags(config: Mapping[str, Any], trainer_ref: str | None) -> dict[str, str]:
    """Name and fingerprint of the built-in trainer's dataset (already cached by the trial)."""
    if trainer_ref or "hpo.data" not in sys.modules:
        return {}
    from hpo import data, train

    name = str(config.get("dataset", train.DEFAULTS["dataset"]))
    try:
        ds = data.load(name, str(config.get("data_dir", train.DEFAULTS["data_dir"])))
    except Exception:  # noqa: BLE001 - the trial already failed on it
        return {"hpo.dataset": name}
    return {"hpo.dataset": name, "hpo.dataset_fingerprint": ds.fingerprint}
