#!/usr/bin/env bash
# The main job on the embedded default data (Fashion-MNIST), from a fresh clone:
#   bash scripts/main.sh [--workdir=DIR] [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.main \
  --config=experiments/configs/fmnist_classifier.py --workdir=runs/fmnist_classifier "$@"
