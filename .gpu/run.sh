#!/usr/bin/env bash
# Issue 21's GPU run in one command, for a machine with one NVIDIA GPU (written for the H200): the CUDA tests,
# then `bench.py step` at LLaDA-8B and SDAR-8B shapes, eager and compiled, then `bench.py decode --compile`.
# Each part has its own time limit and a failed part does not stop the next; the whole takes at most 9
# minutes, compilation included (limits of 550 s in all, plus 5 s a part to stop one that ignores SIGINT).
# Everything is printed and also written to $OUT/log.txt.
#   bash .gpu/run.sh     from the repository root; OUT defaults to /tmp/gpu-out, PY to python3, and SIZE to 8b
#                        (SIZE=tiny tries the script itself on a CPU in a few minutes)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}
SIZE=${SIZE:-8b}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor-issue21 TRITON_CACHE_DIR=/tmp/torchinductor-issue21/triton

part() {  # part LIMIT NAME COMMAND...: one part under a time limit (SIGINT first: Python says where it was)
    local limit=$1 name=$2 t0=$SECONDS
    shift 2
    echo
    echo "=== $name (at most ${limit} s): $*"
    timeout --signal=INT --kill-after=5 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    if [ $rc -ge 124 ]; then  # stopped, perhaps while writing a compiled kernel: start the next part afresh
        rm -rf "$TORCHINDUCTOR_CACHE_DIR"
    fi
}

PROBE='
import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton",
      triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability(), flush=True)
# how torch.topk picks among tied values here (decode.py reproduces the per-row official calls either way)
c = (torch.randint(0, 3, (256, 200), generator=torch.Generator().manual_seed(0)) / 3).double().cuda()
rank0, batched = torch.topk(c, 200, dim=1).indices[:, 0], torch.topk(c, 7, dim=1).indices
rows = torch.stack([torch.topk(r, 7).indices for r in c])
print("topk rank 0 is the lowest-index maximum:", bool((rank0 == c.argmax(1)).all()),
      "| batched topk equals per-row topk:", bool((batched == rows).all()))
'

main() {
    part 25 versions "$PY" -c "$PROBE"
    part 10 nvidia-smi nvidia-smi
    local tests="$PY -m pytest -q -p no:cacheprovider --durations=5 tests/test_cuda.py"
    part 75 tests $tests tests/test_llada2.py -k "not compiled_decoding and (cuda or not llada2)"
    part 80 step-eager "$PY" bench.py step --size "$SIZE" --batch 1,8,64 --repeats 10
    local logs=TORCH_LOGS=graph_breaks,recompiles,perf_hints  # why recompiled, why CUDA graphs skipped
    part 170 step-compiled env $logs "$PY" bench.py step --size "$SIZE" --compile --batch 1,8,64 \
        --calls sdar-step,llada-dual,llada2-step --repeats 10
    part 150 decode-compiled env $logs "$PY" bench.py decode --size "$SIZE" --compile --runs dual,sdar-cache \
        --sdar-gen-length 128
    part 40 tests-compiled $tests -k "compiled_decoding"
}

main 2>&1 | tee -a "$OUT/log.txt"
