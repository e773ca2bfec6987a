#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (configured in pyproject.toml, [tool.mutmut]).
#
#   scripts/mutation.sh                               # every core module (hours on 2 cores)
#   scripts/mutation.sh fl_vmix.privacy.vfe ...       # some modules (dotted names)
#
# Runs nice'd in mutants/ (a mutated copy of fl_vmix/; delete it to start afresh), then prints the score per module
# (scripts/mutation_scores.py). `mutmut results` lists the survivors, `mutmut show <name>` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
MUTMUT="${MUTMUT:-mutmut}"
PYTHON="${PYTHON:-python}"
export FLWR_HOME="$PWD/.flwr_home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 \
       OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
unset PYTHONPATH  # the tests must import the mutated copy in mutants/, never this checkout
# A fresh traced run of the test selection every time: mutmut 3.8 keeps its map of which tests call which function
# (mutants/mutmut-stats.json) and on later runs traces only tests that are new, so an old test that starts calling a
# new or changed function is never mapped to it and that function's mutants skip it (false survivors; seen with
# ShuffleGeometry.kernel_tables, mapped to 160 of the 337 tests that reach it). The traced run takes about a minute.
rm -f mutants/mutmut-stats.json
patterns=()
for module in "$@"; do patterns+=("$module.*"); done
start=$(date +%s)
nice -n 10 "$MUTMUT" run --max-children "${MUTMUT_CHILDREN:-2}" "${patterns[@]}"
echo "wall time: $(( $(date +%s) - start )) s"
"$PYTHON" scripts/mutation_scores.py "$@"
