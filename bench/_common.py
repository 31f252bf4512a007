"""Shared bits of the benchmarks: the machine they ran on, timing a command."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    gpus = "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            names = out.stdout.strip().splitlines()
            gpus = f"{len(names)}x {names[0]}"
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{mem:.0f} GiB RAM, {gpus}, Python {platform.python_version()}")


def timed(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    took = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{argv} failed:\n{out.stderr[-3000:]}")
    return took, out


def disk_sectors_written() -> int:
    """Bytes every block device (not loop, RAM) has written since boot, after a sync."""
    os.sync()
    total = 0
    for dev in Path("/sys/block").iterdir():
        if dev.name.startswith(("loop", "ram", "zram")):
            continue
        total += int((dev / "stat").read_text().split()[6])
    return total * 512
