#!/usr/bin/env bash
# The main job on the embedded default data (Fashion-MNIST), from a fresh clone: paper A's
# whole RKD-SC pipeline (teacher fine-tune → KDL-DARTS → stage 1 → stage 2 → baselines →
# export → report), about 35 minutes on 2 CPU cores; rerun to resume.
#   bash scripts/main.sh [--workdir=DIR] [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev  # torch converts the offline teacher's ImageNet weights once.
exec .venv/bin/python -m experiments.main \
  --config=experiments/configs/rkdsc_fmnist.py --workdir=runs/rkdsc_fmnist "$@"
