#!/usr/bin/env bash
# One check of a fresh GPU machine that has PyTorch (about 8 minutes at most):
#   1. builds atss_core/_C for this GPU's architecture (TORCH_CUDA_ARCH_LIST from the device);
#   2. runs the tests' CUDA cases (those that skip with "no CUDA device" elsewhere);
#   3. runs tools/gpu_check.py: inference at batch 1 and 8 in float32 / bfloat16 / float16 and an
#      AMP training step at 2 and 8 images, next to torchvision FCOS, as one table.
#
#   bash tools/gpu_check.sh [OUTPUT_DIR]        (default: $OUT, else /tmp/atss_gpu_check)
#
# Logs and the table go to OUTPUT_DIR. Golden data: $ATSS_GOLDEN_DIR, else shared/golden inside
# the checkout, else ../shared/golden beside it; without it the golden cases skip.
# Wheels in .whl/ (tools/gpu_wheels.sh) are installed first, into $SITE_DIR (default /tmp/atss_site).
# Environment: PYTHON (default python3); time limits in seconds BUILD_TIMEOUT_S (150),
# TESTS_TIMEOUT_S (150) and BENCH_TIMEOUT_S (180), together 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-150}
TESTS_TIMEOUT_S=${TESTS_TIMEOUT_S:-150}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-180}
OUTPUT_DIR=${1:-${OUT:-/tmp/atss_gpu_check}}
SITE_DIR=${SITE_DIR:-/tmp/atss_site}
mkdir -p "$OUTPUT_DIR"
status=0

fail() { echo "gpu_check: $*" >&2; exit 1; }

if compgen -G ".whl/*.whl" >/dev/null; then  # wheels fetched by tools/gpu_wheels.sh and carried here
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE_DIR" \
        .whl/*.whl || fail "installing the carried wheels in .whl/ failed"
    export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "no CUDA device visible to PyTorch ($PYTHON); run this on a GPU machine"
missing=$("$PYTHON" - <<'EOF'
import importlib.util
names = {"yacs": "yacs", "pycocotools": "pycocotools", "cv2": "opencv-python-headless", "tqdm": "tqdm",
         "torchvision": "torchvision", "pytest": "pytest", "matplotlib": "matplotlib"}
print(" ".join(pip for module, pip in names.items() if importlib.util.find_spec(module) is None))
EOF
)
[ -z "$missing" ] || fail "missing Python packages: $missing (pip install them, or fetch their wheels with tools/gpu_wheels.sh and carry .whl/)"

arch=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "== build atss_core/_C for sm ${arch} (log: $OUTPUT_DIR/build.log)"
start=$SECONDS
timeout "$BUILD_TIMEOUT_S" "$PYTHON" setup.py build_ext --inplace >"$OUTPUT_DIR/build.log" 2>&1 \
    || { tail -20 "$OUTPUT_DIR/build.log"; fail "building _C failed (see $OUTPUT_DIR/build.log)"; }
"$PYTHON" -c "import torch, atss_core._C as C; print('   built in', $SECONDS - $start, 's:', C.__file__)" \
    || fail "the built atss_core._C does not load"

if [ -z "${ATSS_GOLDEN_DIR:-}" ] && [ -d shared/golden ]; then
    export ATSS_GOLDEN_DIR="$PWD/shared/golden"
fi
echo "== tests on CUDA: the cases parametrised with 'cuda' (log: $OUTPUT_DIR/tests.log)"
timeout "$TESTS_TIMEOUT_S" "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda -rs tests \
    >"$OUTPUT_DIR/tests.log" 2>&1
tests_rc=$?
tail -15 "$OUTPUT_DIR/tests.log"
[ "$tests_rc" -eq 0 ] || { echo "gpu_check: CUDA tests failed or timed out (exit $tests_rc)" >&2; status=1; }

echo "== benchmark (table: $OUTPUT_DIR/gpu_check.md)"
timeout "$BENCH_TIMEOUT_S" "$PYTHON" tools/gpu_check.py --device cuda --out "$OUTPUT_DIR" \
    2>"$OUTPUT_DIR/benchmark.log" || { tail -20 "$OUTPUT_DIR/benchmark.log"; echo "gpu_check: benchmark failed" >&2; status=1; }
exit $status
