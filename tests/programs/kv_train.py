"""A script that knows nothing of wandb or hpo: it prints `name=value` lines (the Katib convention)."""

import argparse
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--epochs", type=int)
a = p.parse_args()
with open(os.path.join(os.environ["SEEN_DIR"], f"pid-{os.getpid()}"), "w") as f:
    f.write(os.environ.get("HPO_TRIAL", ""))
score = 0.0
for epoch in range(1, a.epochs + 1):
    score = a.lr * epoch
    print(f"epoch {epoch}: score={score:.6f} loss={1 - score:.6f}", flush=True)
    time.sleep(float(os.environ.get("EPOCH_S", "0")))
