#!/usr/bin/env bash
# The GPU checks of issue 14, prepared to run in one call on a lent GPU machine (about 8 minutes at most):
#   the scanner's exactness tests on CUDA (CLIPSIM_TEST_DEVICE), search_throughput and gap_statistics with
#   --device cuda.
#
#   bash benchmarks/device_check.sh            # writes $OUT (the device tool's folder) or ./device_out
#   DEVICE=cpu SMALL=1 bash benchmarks/device_check.sh   # a dry run of the script itself on a CPU, in ~2 minutes
#
# Every step has its own time limit, and a failed step does not stop the next, so one broken part still leaves
# the other figures. Eight files come back: env.txt, steps.txt and each step's .out (JSON, or pytest's report)
# and .log (stderr). The machine's image has torch, numpy, pandas, pyarrow, numba and pytest; it may lack faiss,
# and search_throughput then compares with torch's chunked top-k on the GPU (see its `skipped`).
set -u
out=${OUT:-device_out}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
if [ -n "${SMALL:-}" ]; then
    throughput=(--queries 500 --train 20000 --ref 2000 --precisions bf16 --repeats 1)
    gap=(--web 20000 --tests 300 --ref 2000 --shard-rows 10000 --precisions bf16)
else
    throughput=(--queries 10000 --train 1000000 --ref 20000 --precisions fp16,bf16 --repeats 2)
    gap=(--web 500000 --tests 5000 --ref 50000 --precisions fp16,bf16)
fi

{
    date -u
    nvidia-smi
    "$py" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__,
                                       torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
    "$py" -m pip list 2>/dev/null | grep -iE "^(faiss[-a-z]*|numba|pandas|pyarrow|torch|numpy|pytest) "
} > "$out/env.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: runs it under `timeout`, records its exit code and seconds
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.out" 2> "$out/$name.log"
    rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$out/steps.txt"
}

step pytest_device 150 env CLIPSIM_TEST_DEVICE="$dev" "$py" -m pytest -q -p no:cacheprovider \
    tests/test_search.py tests/test_kernel.py -k "not benchmark"
step search_throughput 200 "$py" benchmarks/search_throughput.py --device "$dev" "${throughput[@]}"
step gap_statistics 120 "$py" benchmarks/gap_statistics.py --device "$dev" "${gap[@]}"
