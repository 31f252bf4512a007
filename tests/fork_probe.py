"""A worker for tests/test_forkserver.py: prints what a started process sees, then sleeps or exits."""

import json
import os
import random
import sys
import time

import numpy

print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "argv": sys.argv[1:],
                  "probe": os.environ.get("PROBE"), "random": random.random(), "numpy": float(numpy.random.rand()),
                  "main": __name__}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if sys.argv[1] == "sleep":
    time.sleep(600)
sys.exit(int(sys.argv[1]))
