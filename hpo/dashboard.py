"""optuna-dashboard for a sweep's storage, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys

from hpo import storage
from hpo.errors import MissingDependency

LOCAL = ("127.0.0.1", "localhost", "::1")


def serve(url: str, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Run optuna-dashboard in the foreground until Ctrl-C."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise MissingDependency("optuna-dashboard", "hpo dashboard") from None
    if host not in LOCAL:
        print(f"hpo: warning: the dashboard on {host} has no authentication; anyone who can reach "
              f"port {port} can read and change the study", file=sys.stderr)
    print(f"hpo: optuna-dashboard for {storage.mask(url)} at http://{host}:{port}/", file=sys.stderr)
    try:
        run_server(storage.open_storage(url), host=host, port=port)
    except KeyboardInterrupt:
        pass
    return 0
