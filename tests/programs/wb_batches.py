"""A common W&B script shape: the training loss logged every batch, the validation metric once per epoch."""

import os

import wandb

run = wandb.init()
lr = wandb.config.lr
with open(os.path.join(os.environ["SEEN_DIR"], f"pid-{os.getpid()}"), "w") as f:
    f.write(os.environ["HPO_TRIAL"])
for epoch in range(9):
    for batch in range(5):
        wandb.log({"train/loss": 1.0 / (1 + epoch * 5 + batch)})
    wandb.log({"val/acc": lr * (epoch + 1)})
run.finish()
