#!/usr/bin/env bash
# The search core on an accelerator, in under 8 minutes, JSON under $OUT (default benchmarks/results/device):
#   1. the supernet parity tests (PyTorch reference on the host CPU, JAX on the device, full f32 precision);
#   2. the search-step benchmark at DARTS's CIFAR-10 setting, JAX against PyTorch on the same GPU;
#   3. one DARTS CIFAR-10 search epoch (50k synthetic images, first order), JAX and PyTorch.
# Uses the machine's python3 with jax, flax, optax, torch (the repository is put on PYTHONPATH):
#   bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, keep going on failure.
  local name=$1 seconds=$2
  shift 2
  echo "== $name (limit ${seconds}s): $*"
  local start=$SECONDS
  timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log" | grep -v -E "^\s*$|Warning" | tail -40
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [[ $rc -eq 0 ]] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
$python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.is_available())"

# TF32 would differ from PyTorch's f32 by ~1e-3 by design; parity is checked at full precision.
step parity 150 env JAX_DEFAULT_MATMUL_PRECISION=highest $python -m pytest -q -x -p no:cacheprovider \
  tests/test_nas.py -k "pytorch or first_depthwise or tied or scatter_windows or exact_vs_hvp" -m "" \
  --junitxml="$out/parity.xml"
# Exact second order as the HVP (forward over reverse here) and DARTS's finite difference; PyTorch's
# faster GPU layout.  The JSON is written after every configuration: a timeout keeps the rows done.
step search_step 200 $python -m benchmarks.search_step --layers=8 --channels=16 --batch_size=64 --steps=10 \
  --jax_second_order_methods=hvp,finite_difference --torch_layouts=channels_last --torch_device=cuda \
  --out="$out/search_step.json"
step search_epoch 120 $python -m benchmarks.search_epoch --images=50000 --torch_device=cuda \
  --out="$out/search_epoch.json"
exit $status
