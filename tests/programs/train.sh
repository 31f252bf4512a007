#!/bin/sh
# A shell script: its parameters as arguments, its metric as name=value lines; exit 3 when asked to fail.
for arg in "$@"; do case "$arg" in --fail=True) echo "sh: asked to fail (lr=$2)" >&2; exit 3;; esac; done
i=1
while [ $i -le 3 ]; do echo "step=$i score=0.$i"; i=$((i + 1)); done
