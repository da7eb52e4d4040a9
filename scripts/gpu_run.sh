#!/usr/bin/env bash
# Measure on one GPU: a CUDA-only test (no host-device sync in the training step), the
# throughput benchmark, then full CIFAR-10 training with progressive
# learning (preset cifar10: 40 epochs, 16 -> 32 px in 4 stages) and the fixed-size baseline
# (40 epochs at 32 px, the final stage's regularization). Built for an H200 without network
# access; the whole script keeps to GPU_RUN_BUDGET_S seconds (default 540).
#
#   OUT=/some/dir scripts/gpu_run.sh            # from the repository root
#
# Data: the compact q95 pack of ../shared/data/cifar10 copied to .gpu/q95 (an ignored folder that
# travels with the working tree), decoded here with its own unpack.py. Training and the per-epoch
# test accuracy use the q95 images; the final weights come back (model.partK.pt) so that the test
# accuracy can be measured on the lossless test.npz afterwards:
#
#   python -m effv2_lib.evaluate OUT/prog --data ../shared/data/cifar10 --json OUT/prog/lossless.json
#   python -m effv2_lib.evaluate OUT/fixed --data ../shared/data/cifar10 --json OUT/fixed/lossless.json
#
# What lands in $OUT (at most 8 files, each under 16 MiB, at most one folder deep):
#   log.txt                      everything printed
#   results.tar.gz               bench.json, bench_compile.json (if time allowed), and each run's
#                                run.json, history.json, summary.json, curves.png, confusion_matrix.png
#   prog/summary.json, fixed/summary.json
#   prog/model.part{0,1}.pt, fixed/model.part{0,1}.pt   final weights (fp32 shards)
# Checkpoints stay in $WORK.
#
# GPU_RUN_TINY=1 runs every step in about a minute on a CPU (cifar-tiny, 2 epochs per run on 20
# images per class) to test the script itself.
set -uo pipefail

OUT=${OUT:?set OUT to the directory that collects the results}
PY=${PYTHON:-python3}
TINY=${GPU_RUN_TINY:-0}
BUDGET=${GPU_RUN_BUDGET_S:-540}
WORK=${GPU_RUN_WORK:-/tmp/effv2-gpu-run}
PACK=${GPU_RUN_PACK:-.gpu/q95}
START=$SECONDS

mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
TEE_PID=$!
remaining() { echo $(( BUDGET - (SECONDS - START) )); }
step() { echo; echo "=== $* ($(( SECONDS - START )) s elapsed, $(remaining) s left)"; }
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
unset EFFV2_QUICK

if [ "$TINY" = 1 ]; then
    MODEL=(--model cifar-tiny --device cpu)
    SIZE=(--epochs 4 --subset-per-class 20 --test-subset-per-class 10 --batch-size 50 --bn-batches 2)
    BENCH=(--model cifar-tiny --device cpu --sizes 16 32 --steps 1 --warmup 1 --batch-size 8)
    BENCH_COMPILE=()
else
    MODEL=(--model cifar)
    SIZE=(--epochs 40 --batch-size 512)
    BENCH=(--model cifar --sizes 16 20 24 28 32)
    BENCH_COMPILE=(--model cifar --sizes 16 32 --compile)
fi

step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
nproc

step "data: unpack $PACK"
if [ ! -f "$WORK/data/train.npz" ]; then
    "$PY" "$PACK/unpack.py" "$WORK/data" || { echo "cannot unpack $PACK"; exit 1; }
fi

if [ "$TINY" != 1 ]; then
    step "CUDA-only test: no host-device sync in the training step"
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_train.py -k never_waits -rs \
        || echo "sync test FAILED or cut short (rc $?)"
fi

step "benchmark (eager)"
"$PY" -m effv2_lib.bench "${BENCH[@]}" --json "$OUT/bench.json" || echo "benchmark FAILED (rc $?)"

train_run() {  # name, extra options...; stops (SIGINT: checkpoint + summary) when its time is up
    local name=$1 limit=$2
    shift 2
    step "train $name (at most $limit s)"
    timeout -s INT -k 60 "$limit" "$PY" -m effv2_lib.train "${MODEL[@]}" "${SIZE[@]}" --preset cifar10 \
        --data "$WORK/data" --full-data-only --out "$OUT/$name" --checkpoint-dir "$WORK/ckpt-$name" \
        --save-weights --overwrite --no-progress "$@"
    echo "train $name exit status $?"
}

# The progressive run is the shorter one: give it 40% of what is left, the baseline the rest.
train_run prog $(( $(remaining) * 2 / 5 ))
train_run fixed $(( $(remaining) - 45 )) --fixed-size 32

if [ ${#BENCH_COMPILE[@]} -gt 0 ] && [ "$(remaining)" -gt 200 ]; then
    step "benchmark with torch.compile"
    timeout -s INT -k 20 $(( $(remaining) - 40 )) "$PY" -m effv2_lib.bench "${BENCH_COMPILE[@]}" \
        --json "$OUT/bench_compile.json" || echo "compiled benchmark FAILED or cut short (rc $?)"
elif [ ${#BENCH_COMPILE[@]} -gt 0 ]; then
    echo "no time left for the torch.compile benchmark"
fi

step "pack"
cd "$OUT" || exit 1
small=$(ls bench.json bench_compile.json prog/*.json prog/*.png fixed/*.json fixed/*.png 2>/dev/null)
tar czf results.tar.gz $small
for f in $small; do
    case $f in */summary.json) ;; *) rm -f "$f" ;; esac
done
ls -la . prog fixed 2>/dev/null
echo "done in $(( SECONDS - START )) s"
exec >&- 2>&-
wait "$TEE_PID"  # log.txt complete before the results are collected
