#!/usr/bin/env bash
# The experiments of the evaluation (README "Results"), at a scale a 2-core CPU affords.
# Runs land in outputs/experiments/<experiment>/<part>/<n>/; reports in experiments/results/<experiment>/
# (with each run's summary.json, metrics.csv and config.json under runs/). Every setting runs with SEEDS
# seeds (default 3): tables show mean ± std. Then `python scripts/readme_tables.py` rewrites the README's tables.
# Usage: FL_VMIX_DATA=../shared/data [SEEDS=3] bash experiments/run_experiments.sh [a|b|c|all]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SEEDS=${SEEDS:-3}
report() { local sub=$1; shift; "$PY" -m fl_vmix.evaluation.report "$sub" --seeds "$SEEDS" "$@"; }
which=${1:-all}

if [[ $which == a || $which == all ]]; then
  # (a) CIFAR-10: VisualMixer at its default target (3x clear VFE) and two others, against clear images;
  #     plus ST-Adam/SGD instead of Adam, and the shuffle-invariant input stage.
  E=cifar10_visualmixer
  report run --experiment $E --part clear -- privacy=none
  report run --experiment $E --part targets -- privacy=visualmixer privacy.target_ratio=1.5,3.0,5.0
  report run --experiment $E --part optimizers -- privacy=visualmixer optimizer=st_adam,sgd
  report run --experiment $E --part invariant -- privacy=visualmixer,none model.invariant=true
fi

if [[ $which == b || $which == all ]]; then
  # (b) noise sweep: VFE and accuracy of the DP methods as noise grows, next to VisualMixer.
  E=cifar10_dp_sweep
  A=outputs/experiments/cifar10_visualmixer
  report run --experiment $E --part gaussian --include $A/clear $A/targets -- privacy=pixel_dp_gaussian privacy.epsilon=64,8,1
  report run --experiment $E --part laplace --include $A/clear $A/targets -- privacy=pixel_dp_laplace privacy.epsilon=64,8
  report run --experiment $E --part dp_pix --include $A/clear $A/targets -- privacy=dp_pix privacy.epsilon=10,1
  report run --experiment $E --part dp_sgd --include $A/clear $A/targets -- privacy=dp_sgd privacy.noise_multiplier=0.5,1.0
  report run --experiment $E --part central_dp --include $A/clear $A/targets -- privacy=central_dp privacy.noise_multiplier=0.1,0.5
  report run --experiment $E --part obfuscations --include $A/clear $A/targets -- privacy=gaussian_blur,mosaic,block_shuffle
fi

if [[ $which == c || $which == all ]]; then
  # (c) the same comparison on RetinaMNIST (28 px RGB fundus images, 5 classes, 1,080 training images).
  E=retinamnist
  report run --experiment $E --part methods -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=none,visualmixer,block_shuffle,gaussian_blur
  report run --experiment $E --part targets -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=visualmixer privacy.target_ratio=5.0
  report run --experiment $E --part dp -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=pixel_dp_gaussian,dp_sgd
fi
