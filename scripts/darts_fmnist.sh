#!/usr/bin/env bash
# KDL-DARTS vs plain DARTS on Fashion-MNIST (experiments/configs/darts_fmnist.py): the teacher,
# the searches, a retrain of every derived cell, then the comparison table and plot
# (runs/darts_fmnist/comparison.{md,json,png}).  JOBS (default 2) searches-then-retrains at a
# time, one per core: XLA's CPU step uses little more than one core.  Rerun to resume;
# finished runs are skipped.
#   bash scripts/darts_fmnist.sh [SEEDS...]     (default 0 1 2)
#   VARIANTS="plain" (default): any of plain (λ = μ = 0), kdl (the paper's penalty, μ = 0.1),
#     kdl_pc (C(α) per cell type, μ = 1)
#   MUS="3 10" (default): the μ sweep, kdl_pc at each μ (runs kdl_pc_mu<μ>_s<seed>); MUS=" " for none
# The default (plain DARTS and KDL-DARTS at μ = 3 and 10, three seeds) is the README's table:
# about two hours on 2 cores.
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

search_and_retrain() {  # name seed config flags...
  local name=$1 seed=$2; shift 2
  run "$RUNS/${name}_s$seed" "$@" --config.seed="$seed" || return 1
  run "$RUNS/${name}_s${seed}_retrain" "$@" --config.seed="$seed" \
    --config.mode=retrain --config.retrain.genotype="$RUNS/${name}_s$seed"
}
chains=()  # "name|flags" per variant.
for variant in ${VARIANTS:-plain}; do chains+=("$variant|--config=$CONFIG:$variant"); done
for mu in ${MUS:-3 10}; do chains+=("kdl_pc_mu$mu|--config=$CONFIG:kdl_pc --config.search.mu=$mu"); done
failed=$(mktemp)
for seed in "${SEEDS[@]}"; do
  for chain in "${chains[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n || true; done
    { search_and_retrain "${chain%%|*}" "$seed" ${chain#*|} || echo "${chain%%|*} seed $seed" >> "$failed"; } &
  done
done
wait
if [ -s "$failed" ]; then echo "Failed: $(paste -sd, "$failed"); rerun to resume them."; exit 1; fi
.venv/bin/python -m experiments.darts.comparison --runs="$RUNS" --seeds="$(IFS=,; echo "${SEEDS[*]}")"
