"""A user's own program that logs its trained model with MLflow into the run hpo gives it ($MLFLOW_RUN_ID).

The "model" is a torch Linear layer whose output is the trial's own `--x`: a test can tell from a
prediction which trial's model was registered.
"""

import argparse

import mlflow
import mlflow.pytorch
import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--x", type=float)
p.add_argument("--epochs", type=int, default=2)
a = p.parse_args()
for epoch in range(1, a.epochs + 1):
    print(f"score={a.x * epoch / a.epochs:.6f}", flush=True)
model = torch.nn.Linear(1, 1)
with torch.no_grad():
    model.weight.zero_()
    model.bias.fill_(a.x)
with mlflow.start_run():  # resumes $MLFLOW_RUN_ID, hpo's child run for this trial
    mlflow.pytorch.log_model(model, name="model", input_example=np.zeros((2, 1), dtype=np.float32),
                             pip_requirements=["torch"])
