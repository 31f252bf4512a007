"""Backends: each takes a prepared Sweep and returns a Result (`run(sweep) -> Result`)."""


def sigterm_as_ctrl_c(signum, frame):  # noqa: ARG001
    """SIGTERM handler for a controller: stop the way Ctrl-C does (clean, resumable)."""
    raise KeyboardInterrupt
