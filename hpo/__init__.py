"""hpo: hyperparameter sweeps from a W&B sweep.yaml on Optuna, Ray Tune or W&B Sweeps.

Importing hpo has no side effects: it reads no GPUs and changes no environment.
"""

__version__ = "0.1.0"


def report(step: int, metrics: dict | None = None, **more: float) -> None:
    """From a sweep's own program: send metrics to hpo (see hpo.program_report)."""
    from hpo.program_report import report as send

    send(step, metrics, **more)
