#!/usr/bin/env bash
# Does OpenMP's spin-waiting cost the mixer time? The same benchmark with the default wait policy, with
# OMP_WAIT_POLICY=PASSIVE (threads sleep at once after a parallel region) and with Numba's workqueue layer.
# Output of one run on the 2-core machine (idle): experiments/results/bench_vmix/omp_wait.log
export FL_VMIX_DATA=${FL_VMIX_DATA:-../shared/data}
cd "$(dirname "$0")/.."
for i in 1 2; do
  for env in "X=1" "OMP_WAIT_POLICY=PASSIVE" "NUMBA_THREADING_LAYER=workqueue"; do
    echo "=== $env run $i $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    env $env ${PYTHON:-.venv/bin/python} scripts/bench_vmix.py --repeats 10 --threads 2 2>&1 | tail -1
  done
done
