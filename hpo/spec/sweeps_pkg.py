"""W&B's `sweeps` package (its sweep engine and its laws), imported quietly.

sweeps 0.2.0 predates pydantic 2: its SweepRun model uses a class-based Config
(PydanticDeprecatedSince20 + a "keys have changed" UserWarning). It works; only
the warnings are silenced, here, rather than patching site-packages.
"""

from __future__ import annotations

import warnings
from typing import Any


def sweeps() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps as package
        import sweeps.params  # noqa: F401 - HyperParameter: W&B's law of each distribution
    return package
