#!/usr/bin/env bash
# KDL-DARTS vs plain DARTS on Fashion-MNIST (experiments/configs/darts_fmnist.py): the teacher,
# 3 seeds of each search, a retrain of every derived cell, then the comparison table
# (runs/darts_fmnist/comparison.{md,json}).  Two runs at a time, one per core: XLA's CPU
# step uses little more than one core.  Rerun to resume; finished runs are skipped.
#   bash scripts/darts_fmnist.sh [SEEDS...]     (default 0 1 2; VARIANTS="kdl plain" by default;
#   VARIANTS="kdl kdl_pc plain" adds KDL-DARTS with C(α) normalised per cell type and μ = 1)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
RUNS=runs/darts_fmnist
SEEDS=("${@:-0 1 2}")
SEEDS=(${SEEDS[@]})
PY=".venv/bin/python -m experiments.main"
CONFIG=experiments/configs/darts_fmnist.py
mkdir -p "$RUNS"

run() {  # workdir, then flags; skipped when the run's summary exists.
  local workdir=$1; shift
  if [ -f "$workdir/summary.json" ]; then echo "done: $workdir"; return; fi
  echo "$(date +%T) start: $workdir"
  $PY --workdir="$workdir" "$@" > "$workdir.log" 2>&1 || { echo "FAILED: $workdir (see $workdir.log)"; return 1; }
  echo "$(date +%T) done: $workdir"
}

run "$RUNS/teacher" --config=experiments/configs/fmnist_classifier.py \
  --config.train.num_epochs=3 --config.data.image_size=16

variant_runs() {  # kdl | plain
  local variant=$1 seed
  for seed in "${SEEDS[@]}"; do
    run "$RUNS/${variant}_s$seed" --config="$CONFIG:$variant" --config.seed="$seed"
  done
  for seed in "${SEEDS[@]}"; do
    run "$RUNS/${variant}_s${seed}_retrain" --config="$CONFIG:$variant" --config.seed="$seed" \
      --config.mode=retrain --config.retrain.genotype="$RUNS/${variant}_s$seed"
  done
}
pids=()
for variant in ${VARIANTS:-kdl plain}; do
  variant_runs "$variant" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ $status = 0 ] || { echo "Some runs failed; rerun to resume them."; exit 1; }
.venv/bin/python -m experiments.darts.comparison --runs="$RUNS" --seeds="$(IFS=,; echo "${SEEDS[*]}")"
