#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent, fast when already done):
#   - a virtual environment in .venv with the exact versions of requirements/constraints.txt
#     (setup.py declares ranges; the constraints file pins them): the torch-free core, plus
#     `--dev` (tests, notebooks, conversion) or `--convert` (torch, to convert the offline
#     teacher's weights once),
#   - Fashion-MNIST from Debian's `dataset-fashion-mnist` package when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
case "${1:-}" in
  --dev) extra="[dev]" ;;
  --convert) extra="[convert]" ;;
  "") ;;
  *) echo "usage: bash scripts/setup.sh [--dev|--convert]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "rkdsc_jax needs Python >= 3.10; $python is $("$python" --version 2>&1). Set PYTHON=/path/to/python3.10+." >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat setup.py requirements/constraints.txt | sha256sum | cut -c1-16)${extra:+-${extra:1:-1}}"
if [[ ! -f "$stamp" ]]; then
  echo "[setup] installing rkdsc_jax${extra} with requirements/constraints.txt's versions into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".${extra}"
  touch "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [[ ! -f "$fmnist" ]]; then
  if [[ $(id -u) -eq 0 ]]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [[ "$sudo" != "none" ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST is not installed and this user cannot install Debian packages." >&2
    echo "        Ask an administrator for 'apt-get install dataset-fashion-mnist', or download the" >&2
    echo "        four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist and" >&2
    echo "        pass their folder with --config.data.data_dir=DIR." >&2
  fi
fi
