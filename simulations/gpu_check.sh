#!/usr/bin/env bash
# The device check, one script of at most 8 minutes: LiteMedSAM throughput (float32 and
# bfloat16, embedding cache off and warm; goal on a GPU: >= 3x the plain float32 forward at
# batch 64), the embedding cache on box-only SPSA and repeated zero-shot, and a short LiteMedSAM
# BAPS run. Results under simulations/results/gpu_check/ (or --out).
#
#   bash simulations/gpu_check.sh                       # on a lent GPU (device cuda)
#   bash simulations/gpu_check.sh --device cpu --quick  # what tests/fm/test_gpu_check.py runs
#
# Data: ../shared/data/drishti-gs-512 where present (real fundus photographs), else the
# synthetic fundus modality (a device machine has no shared data). --quick shrinks every part
# to a few synthetic images so the script itself is checked on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
OUT=simulations/results/gpu_check
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --device cpu|cuda, --quick, --out DIR)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"

DATA=../shared/data/drishti-gs-512
[[ -d "$DATA" && $QUICK == 0 ]] || DATA=fundus
if [[ $QUICK == 1 ]]; then
    IMAGES=1 CHUNK=1 REPEATS=1 STEPS=2 BATCH=1 N=8 LIMIT=240
else
    IMAGES=256 CHUNK=64 REPEATS=3 STEPS=60 BATCH=16 N=200 LIMIT=150
fi
THREADS=$(( $(nproc) < 8 ? $(nproc) : 8 ))

echo "gpu_check: device $DEVICE, data $DATA, quick $QUICK, out $OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
    | tee "$OUT/device.txt"

FAILED=()
part() {  # run one part; a failure or time-out is recorded and the next part still runs
    local name="$1"; shift
    if ! timeout "$LIMIT" "$PY" "$@"; then FAILED+=("$name"); echo "gpu_check: $name failed" >&2; fi
}

# 1. throughput: float32 vs bfloat16, cache off vs warm, at the device's batch
part throughput simulations/bench_fm_throughput.py --fm litemedsam --device "$DEVICE" \
    --size 256 --images "$IMAGES" --repeats "$REPEATS" --chunks "$CHUNK" \
    --dtypes float32 bfloat16 --threads "$THREADS" --out "$OUT/throughput"

# 2. the embedding cache on box-only SPSA steps and repeated zero-shot
part encode_once simulations/bench_encode_once.py --fm litemedsam --device "$DEVICE" \
    --data "$DATA" --n "$N" --steps "$STEPS" --batch "$BATCH" --threads "$THREADS" \
    --out "$OUT/encode_once"

# 3. a short LiteMedSAM BAPS run: box refinement and both, loose boxes
part litemedsam_baps simulations/bench_litemedsam_baps.py --fm litemedsam --device "$DEVICE" \
    --data "$DATA" --n "$N" --steps "$STEPS" --val-every "$(( STEPS / 2 ))" --batch "$BATCH" \
    --sp-avg 1 --arms box both --threads "$THREADS" --runs "$OUT/runs" --out "$OUT/litemedsam_baps"

if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "gpu_check: failed parts: ${FAILED[*]}; results so far in $OUT" >&2
    exit 1
fi
echo "gpu_check: done; results in $OUT"
