"""Cross-validation with worker processes, in the shape of W&B's own cross-validation sweep example:
the workers are started before `wandb.init()` (forking a process that already runs wandb's threads is
unsafe), each scores one fold, and only the parent logs: each fold's score, then the mean, which is
the sweep's metric."""

import argparse
import json
import multiprocessing
import os
import sys

import numpy as np


def score_fold(job):
    """One fold, in a worker process: a closed form of the parameters stands in for fitting a model."""
    fold, c, gamma = job
    weights = np.linspace(0.5, 0.5 + 0.1 * fold, num=4)  # the fold's "validation scores"
    acc = round(c / (c + gamma) * float(weights[-1]), 6)
    return fold, acc, os.getpid()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--C", type=float, required=True)
    parser.add_argument("--gamma", type=float, required=True)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()

    pool = multiprocessing.Pool(processes=2)  # before wandb.init, as W&B's example advises
    import wandb

    run = wandb.init(project="corpus", config=vars(args))
    results = sorted(pool.map(score_fold, [(k, args.C, args.gamma) for k in range(args.folds)]))
    pool.close()
    pool.join()
    for fold, acc, _ in results:
        run.log({"fold": fold, "fold_acc": acc})
    mean = round(float(np.mean([acc for _, acc, _ in results])), 6)
    run.log({"cv_acc": mean})
    if os.environ.get("SEEN_DIR"):
        with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
            json.dump({"program": "multiprocessing_folds", "argv": sys.argv[1:], "params": vars(args),
                       "logged": [mean], "parent": os.getpid(),
                       "workers": sorted({pid for _, _, pid in results})}, f)
    run.finish()


if __name__ == "__main__":
    main()
