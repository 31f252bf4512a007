"""A script that reports through `hpo.report`; it ignores SIGTERM and forks a child that would outlive it."""

import os
import signal
import sys
import time

import hpo

signal.signal(signal.SIGTERM, signal.SIG_IGN)
seen = os.environ["SEEN_DIR"]
child = os.fork()
if child == 0:  # a data-loader-like child in the same process group
    with open(os.path.join(seen, f"pid-{os.getpid()}"), "w") as f:
        f.write("child")
    time.sleep(600)
    os._exit(0)
with open(os.path.join(seen, f"pid-{os.getpid()}"), "w") as f:
    f.write("main")
lr = float(sys.argv[1])
epochs = int(sys.argv[2])
for epoch in range(1, epochs + 1):
    hpo.report(epoch, score=lr * epoch)
    time.sleep(float(os.environ.get("EPOCH_S", "0")))
