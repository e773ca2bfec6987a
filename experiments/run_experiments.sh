#!/usr/bin/env bash
# The experiments of the evaluation (README "Results"), at a scale a 2-core CPU affords.
# Runs land in outputs/experiments/<experiment>/<part>/<n>/; reports in experiments/results/<experiment>/
# (with each run's summary.json, metrics.csv and config.json under runs/). Every setting runs with SEEDS
# seeds (default 3): tables show mean ± std. Then `python scripts/readme_tables.py` rewrites the README's tables.
# Usage: FL_VMIX_DATA=../shared/data [SEEDS=3] bash experiments/run_experiments.sh [a|c|paper|pneumonia|all]
# (paper: the full-data curve of README "The paper's claim, tested"; aimed at two hours a run on 2 CPU cores, not yet timed, so
# it is not part of `all`: run one part a session, SEEDS=2, and commit each finished part)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SEEDS=${SEEDS:-3}
report() { local sub=$1; shift; "$PY" -m fl_vmix.evaluation.report "$sub" --seeds "$SEEDS" "$@"; }
which=${1:-all}

if [[ $which == a || $which == all ]]; then
  # (a) CIFAR-10 frontier: VisualMixer settings (target, region, blocks, channel order, dynamic, shuffle-invariant
  #     model) next to the image-level baselines and the training-level DP methods, on the default scale;
  #     ordered so that a grid cut short still compares the default with the baselines.
  E=cifar10_frontier
  report run --experiment $E --part clear -- privacy=none
  report run --experiment $E --part default -- privacy=visualmixer
  report run --experiment $E --part obfuscations -- privacy=block_shuffle,gaussian_blur,mosaic
  report run --experiment $E --part image_dp -- privacy=pixel_dp_gaussian,dp_pix ++privacy.epsilon=8  # ++: the default privacy (visualmixer) has no epsilon
  report run --experiment $E --part region4 -- privacy=visualmixer privacy.region_size=4
  report run --experiment $E --part blocks -- privacy=visualmixer 'privacy.block_sizes=[1]'
  report run --experiment $E --part channels -- privacy=visualmixer privacy.permute_channels=true
  report run --experiment $E --part target5 -- privacy=visualmixer privacy.target_ratio=5.0
  report run --experiment $E --part region16 -- privacy=visualmixer privacy.region_size=16
  report run --experiment $E --part dynamic -- privacy=visualmixer privacy.mode=dynamic
  report run --experiment $E --part invariant -- privacy=visualmixer model.invariant=true
  # the baselines at a second strength: a coarser mosaic, DP-Pix at its configured epsilon (1, stronger than 8), a wider blur
  report run --experiment $E --part mosaic8 -- privacy=mosaic privacy.cell_size=8
  report run --experiment $E --part dp_pix1 -- privacy=dp_pix privacy.epsilon=1.0
  report run --experiment $E --part blur4 -- privacy=gaussian_blur privacy.sigma=4.0 privacy.kernel_size=15
  # and pixel DP and block shuffle at a weaker second strength (their first points cost the most accuracy)
  report run --experiment $E --part pixel_dp32 -- privacy=pixel_dp_gaussian privacy.epsilon=32.0
  report run --experiment $E --part block_shuffle4 -- privacy=block_shuffle privacy.region_size=4
  report run --experiment $E --part training_dp -- privacy=dp_sgd,central_dp ++privacy.noise_multiplier=1.0  # ++: as in image_dp
fi

if [[ $which == paper ]]; then
  # The paper's claim at full data: all 50,000 CIFAR-10 training images, ResNet-20, 10 clients, crop and flip
  # before protection, cosine schedule (preset=full_cifar10), clear against the paper's operating point, region 4,
  # the default (region 8), region 16 with and without the shuffle-invariant model, an 8-px mosaic, and ST-Adam.
  E=cifar10_full
  K=engine.simulation_keys=random  # secret per-machine client keys: a privacy report must not rest on derivable keys
  P=${PART:-}  # PART=<name>: only that part (a session runs one or two)
  part() { [[ -z $P || $P == "$1" ]]; }
  part clear && report run --experiment $E --part clear -- preset=full_cifar10 $K privacy=none
  part paper_point && report run --experiment $E --part paper_point -- preset=full_cifar10 $K privacy=visualmixer_paper_point
  part region4 && report run --experiment $E --part region4 -- preset=full_cifar10 $K privacy=visualmixer privacy.region_size=4
  part default && report run --experiment $E --part default -- preset=full_cifar10 $K privacy=visualmixer
  part region16 && report run --experiment $E --part region16 -- preset=full_cifar10 $K privacy=visualmixer privacy.region_size=16
  part invariant16 && report run --experiment $E --part invariant16 -- preset=full_cifar10 $K privacy=visualmixer privacy.region_size=16 model.invariant=true
  part mosaic8 && report run --experiment $E --part mosaic8 -- preset=full_cifar10 $K privacy=mosaic privacy.cell_size=8
  part st_adam && report run --experiment $E --part st_adam -- preset=full_cifar10 $K privacy=visualmixer optimizer=st_adam,adam '~optimizer.momentum' optimizer.lr=0.001  # ~: SGD's momentum is no Adam setting
  true
fi

if [[ $which == pneumonia ]]; then
  # The same settings on PneumoniaMNIST at full size (4,708 grey 28-px chest X-rays, 2 classes; the recipe of
  # preset=full_cifar10, 3 seeds). On one channel the chromatic shuffle is a plain spatial shuffle.
  E=pneumoniamnist_full
  M="preset=full_cifar10 dataset=pneumoniamnist engine.simulation_keys=random"
  report run --experiment $E --part clear -- $M privacy=none
  report run --experiment $E --part paper_point -- $M privacy=visualmixer_paper_point
  report run --experiment $E --part shuffles -- $M privacy=visualmixer privacy.region_size=4,8,16
  report run --experiment $E --part invariant16 -- $M privacy=visualmixer privacy.region_size=16 model.invariant=true
  report run --experiment $E --part mosaic8 -- $M privacy=mosaic privacy.cell_size=8
fi

if [[ $which == c || $which == all ]]; then
  # (c) the same comparison on RetinaMNIST (28 px RGB fundus images, 5 classes, 1,080 training images).
  E=retinamnist
  report run --experiment $E --part methods -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=none,visualmixer,block_shuffle,gaussian_blur
  report run --experiment $E --part targets -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=visualmixer privacy.target_ratio=5.0
  report run --experiment $E --part dp -- dataset=retinamnist num_rounds=15 local_epochs=3 privacy=pixel_dp_gaussian,dp_sgd
fi
