"""hpo: hyperparameter sweeps from a W&B sweep.yaml on Optuna, Ray Tune or W&B Sweeps.

Importing hpo has no side effects: it reads no GPUs and changes no environment.
"""

__version__ = "0.1.0"
