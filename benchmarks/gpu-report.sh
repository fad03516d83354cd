#!/usr/bin/env bash
# The GPU figures of the README, in one run on a CUDA machine: the fused kernels' tests compiled for it, their
# registers and spills as its Triton compiles them (benchmarks/kernel_resources.py), a flattened --fp16
# checkpoint written on the GPU and read by the safe loader (tests/test_safe_load.py), the loss alone
# (benchmarks/loss_kernel.py), one training step per shape (benchmarks/step_cost.py) and fairseq-train
# throughput (benchmarks/train_throughput.py), each printed and kept in OUT_DIR (NAME.md the tables, NAME.log
# the whole output).  A benchmark that fails stops the report and shows the end of its log; a failing test or
# resource count only warns, so that the timings after it are still made.
#
# Usage: benchmarks/gpu-report.sh [OUT_DIR]     (default: gpu-report)
# Env:   PYTHON       interpreter with rdrop_fairseq's dependencies (default: python3)
#        REPEATS      steps timed per mode (default: 10)
#        BF16_SHAPES  step_cost shapes in bf16 (default: iwslt iwslt_full wmt wmt_full lm)
#        FP16_SHAPES  step_cost shapes in fp16 (default: iwslt_full wmt_full)
#        BLOCKS       loss_kernel's --blocks: block sizes timed beside the kernels' own (default: 1024 2048 8192)
#        CORPUS, WORK_DIR  train_throughput's --corpus and --work-dir (its defaults otherwise)
#        THROUGHPUT_UPDATES  updates per throughput run (default: 150; 0 skips it)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-report}
PYTHON=${PYTHON:-python3}
repeats=${REPEATS:-10}
BLOCKS=${BLOCKS-1024 2048 8192}
mkdir -p "$out"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "error: no CUDA device visible to $PYTHON; this report is for a GPU (CPU figures: benchmarks/step_cost.py)" >&2
    exit 2
fi
stamp() { echo "[$(date +%T)] $*" >&2; }
# logged fail|warn NAME CMD...: run CMD, keep its whole output in $out/NAME.log; if it fails, show the end of
# the log, so that the report never stops without saying why, and stop (fail) or go on (warn).
logged() {
    local on_failure=$1 name=$2 status=0
    shift 2
    "$@" >>"$out/$name.log" 2>&1 || status=$?
    if ((status)); then
        local label="error"
        [[ $on_failure == warn ]] && label="warning: the report goes on, but"
        echo "$label: '$*' failed ($status); the end of $out/$name.log:" >&2
        tail -n 30 "$out/$name.log" >&2
        [[ $on_failure == warn ]] || exit "$status"
    fi
}
keep() { logged fail "$@"; }
# note: what it checks must not cost the timings after it
note() { logged warn "$@"; }
tables() { grep -E '^(\||## )' "$out/$1.log" | tee "$out/$1.md" || true; }

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
"$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$out/device.txt"
rm -f "$out"/{kernel-tests,checkpoint-tests,kernel-resources,step-cost-bf16,step-cost-fp16,loss-kernel-bf16,loss-kernel-fp16,train-throughput}.log
stamp kernel tests
note kernel-tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_rdrop_loss_triton.py
tail -n 3 "$out/kernel-tests.log" | tee "$out/kernel-tests.txt"
stamp "kernel resources"
arch=$("$PYTHON" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')
note kernel-resources "$PYTHON" benchmarks/kernel_resources.py --arch "$arch" --dtype bf16 fp16 --copies 2
tables kernel-resources
stamp "checkpoint written on CUDA"
note checkpoint-tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_safe_load.py -k written_on_cuda
tail -n 3 "$out/checkpoint-tests.log" | tee "$out/checkpoint-tests.txt"
for shape in ${BF16_SHAPES-iwslt iwslt_full wmt wmt_full lm}; do
    stamp "step_cost $shape bf16"
    keep step-cost-bf16 "$PYTHON" benchmarks/step_cost.py --shape "$shape" --device cuda --dtype bf16 --repeats "$repeats"
done
tables step-cost-bf16
for dtype in bf16 fp16; do
    stamp "loss_kernel $dtype"
    keep "loss-kernel-$dtype" "$PYTHON" benchmarks/loss_kernel.py --dtype "$dtype" ${BLOCKS:+--blocks $BLOCKS}
    tables "loss-kernel-$dtype"
done
for shape in ${FP16_SHAPES-iwslt_full wmt_full}; do
    stamp "step_cost $shape fp16"
    keep step-cost-fp16 "$PYTHON" benchmarks/step_cost.py --shape "$shape" --device cuda --dtype fp16 --repeats "$repeats"
done
tables step-cost-fp16
if [ "${THROUGHPUT_UPDATES:-150}" -gt 0 ]; then
    stamp train_throughput
    keep train-throughput "$PYTHON" benchmarks/train_throughput.py ${CORPUS:+--corpus "$CORPUS"} \
        ${WORK_DIR:+--work-dir "$WORK_DIR"} --updates "${THROUGHPUT_UPDATES:-150}" --rounds 2 --max-tokens 4096 \
        --extra "--fp16" --model "--arch transformer_iwslt_de_en --share-all-embeddings --dropout 0.3"
    grep -E '^(\||round|[0-9]+ updates)' "$out/train-throughput.log" | tee "$out/train-throughput.md"
fi
stamp done
