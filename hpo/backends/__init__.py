"""Engines: one package each (optuna, ray, wandb), one contract (base.Backend), one registry (base.get)."""
