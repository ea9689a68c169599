#!/usr/bin/env bash
# The main job on the embedded default data (Fashion-MNIST), from a fresh clone: paper A's
# whole RKD-SC pipeline (teacher fine-tune → KDL-DARTS → stage 1 → stage 2 → baselines →
# export → report), about 35 minutes on 2 CPU cores; rerun to resume.
#   bash scripts/main.sh [--workdir=DIR] [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # The torch-free core: the job itself never imports torch.
# The offline teacher's ImageNet weights ship as a PyTorch file: converted once (torch, the
# [convert] extra) into a torch-free safetensors cache that the job reads.
if ! .venv/bin/python -c 'import os, sys; from rkdsc_jax.models import convert
sys.exit(not os.path.isfile(convert.lite0_weights_path()))'; then
  bash scripts/setup.sh --convert
  .venv/bin/python -c 'from rkdsc_jax.models import convert; print("[setup] converted:", convert.convert_efficientnet_lite0())'
fi
exec .venv/bin/python -m experiments.main \
  --config=experiments/configs/rkdsc_fmnist.py --workdir=runs/rkdsc_fmnist "$@"
