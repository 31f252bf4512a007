"""A click CLI, as many research repositories write their entry points: hyphenated options, a
`--augment/--no-augment` switch and a Choice. The sweep uses `${args_no_boolean_flags}`, so W&B passes
`--augment` for true and leaves the flag out for false; click maps `--learning-rate` to `learning_rate`."""

import json
import os
import sys

import click
import wandb


@click.command(context_settings={"show_default": True})
@click.option("--learning-rate", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, help="step size")
@click.option("--num-layers", type=click.IntRange(min=1), default=2)
@click.option("--activation", type=click.Choice(["relu", "gelu", "tanh"]), default="relu")
@click.option("--augment/--no-augment", default=False, help="random flips")
@click.option("--epochs", type=int, default=4)
def train(learning_rate, num_layers, activation, augment, epochs):
    """Train the toy model and log its validation F1 once per epoch."""
    received = {"learning-rate": learning_rate, "num-layers": num_layers, "activation": activation,
                "augment": augment, "epochs": epochs}
    run = wandb.init(project="corpus", config=received)
    gain = {"relu": 1.0, "gelu": 1.1, "tanh": 0.9}[activation] * (1.5 if augment else 1.0)
    logged = []
    for epoch in range(epochs):
        f1 = round(min(1.0, learning_rate * num_layers * gain * (epoch + 1)), 6)
        run.log({"epoch": epoch + 1, "valid/F1": f1})
        logged.append(f1)
    if os.environ.get("SEEN_DIR"):
        with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
            json.dump({"program": "click_cli", "argv": sys.argv[1:], "params": received, "logged": logged}, f)
    run.finish()


if __name__ == "__main__":
    train()
