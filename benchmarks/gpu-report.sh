#!/usr/bin/env bash
# The GPU figures of the README, in one run on a CUDA machine: the fused kernels' tests compiled for it, their
# registers and spills as its Triton compiles them (benchmarks/kernel_resources.py), a flattened --fp16
# checkpoint written on the GPU and read by the safe loader (tests/test_safe_load.py), one training step per
# shape in bf16 and fp16 (benchmarks/step_cost.py: the speed goal's figures, so before the rest), the loss
# alone (benchmarks/loss_kernel.py) and fairseq-train throughput (benchmarks/train_throughput.py), each
# printed and kept in OUT_DIR (NAME.md the tables, NAME.log the whole output).  Anything that fails warns and
# shows the end of its log, and the report goes on, so that one failing shape (out of memory, say) costs the
# device run only its own figures; the exit status is that of the last failure.  Throughput is skipped, with a
# warning, when its corpus is not there.  After every section the tables so far are gathered into
# BUNDLE_DIR/gpu-report.md and the whole OUT_DIR into BUNDLE_DIR/gpu-report.tar.gz: two files, as a device
# machine brings back only a few, and whatever had finished when a time limit struck.
#
# Usage: benchmarks/gpu-report.sh [OUT_DIR]     (default: gpu-report)
# Env:   BUNDLE_DIR   where the two files go (default: $OUT where it is set, as on the device machine, whose
#                     $OUT comes back; else none are made)
#        LIMIT_S      seconds the whole report may take (default: no limit): each section runs under what is
#                     left, and sections that find under 20 s left are skipped, so that the report ends with
#                     its tables gathered before a time limit outside it strikes (leave that limit 30 s more:
#                     a section stopped has 5 s to go, and gathering takes a moment)
#        PYTHON       interpreter with rdrop_fairseq's dependencies (default: python3)
#        REPEATS      steps timed per mode (default: 10)
#        BF16_SHAPES  step_cost shapes in bf16 (default: iwslt iwslt_full wmt wmt_full lm)
#        FP16_SHAPES  step_cost shapes in fp16 (default: iwslt iwslt_full wmt wmt_full lm)
#        BLOCKS       loss_kernel's --blocks: block sizes timed beside the kernels' own (default: 1024 2048 8192)
#        CORPUS, WORK_DIR  train_throughput's --corpus and --work-dir (default corpus: .corpus/lohelp-de-en
#                          in the checkout, where a device run carries it, else ../shared/corpora/lohelp-de-en)
#        THROUGHPUT_UPDATES  updates per throughput run (default: 150; 0 skips it)
#        COPIES       loss_kernel's --copies for its last table, the wmt shape in bf16 (default: 3 4 5 6 7 8;
#                     empty skips it)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-report}
bundle=${BUNDLE_DIR:-${OUT:-}}
PYTHON=${PYTHON:-python3}
repeats=${REPEATS:-10}
BLOCKS=${BLOCKS-1024 2048 8192}
limit=${LIMIT_S:-}
[[ -z $limit || $limit =~ ^[1-9][0-9]*$ ]] || { echo "error: LIMIT_S must be a positive number of seconds, got '$limit'" >&2; exit 2; }
deadline=$((limit ? SECONDS + limit : 0))
# compiled kernels, not the interpreter, whatever the caller's environment says
unset TRITON_INTERPRET
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.md "$out"/*.txt  # an earlier report's, which would be gathered with this one's
if [[ -n ${OUT:-} && $(CDPATH= cd -- "$out" && pwd -P)/ == "$(CDPATH= cd -- "$OUT" && pwd -P)"/* ]]; then
    echo "warning: OUT_DIR $out is inside \$OUT, of which a device machine brings back 8 files: the report's are" \
         "about 20; the two gathered files are enough there (the default OUT_DIR, gpu-report, stays outside)" >&2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "error: no CUDA device visible to $PYTHON; this report is for a GPU (CPU figures: benchmarks/step_cost.py)" >&2
    exit 2
fi
stamp() { echo "[$(date +%T)] $*" >&2; }
# logged NAME CMD...: run CMD, keep its whole output in $out/NAME.log; if it fails, say so with the end of the
# log and go on: one device run has to bring back every figure it can.
failed=0
logged() {
    local name=$1 status=0 left=
    shift
    if ((deadline)); then
        left=$((deadline - SECONDS))
        if ((left < 20)); then
            echo "skipped: LIMIT_S=$limit s was nearly spent" >>"$out/$name.log"
            echo "warning: LIMIT_S=$limit s is nearly spent: '$*' skipped" >&2
            failed=124
            return 0
        fi
    fi
    ${left:+timeout -k 5 "$left"} "$@" >>"$out/$name.log" 2>&1 || status=$?
    if ((status)); then
        failed=$status
        echo "warning: the report goes on, but '$*' failed ($status); the end of $out/$name.log:" >&2
        tail -n 30 "$out/$name.log" >&2
    fi
}
tables() { grep -E '^(\||## )' "$out/$1.log" | tee "$out/$1.md" || true; }
# The tables and test summaries so far, in the report's order, as one file, and the whole folder as another.
gather() {
    [[ -n $bundle ]] || return 0
    local name
    mkdir -p "$bundle"
    for name in device.txt kernel-tests.txt kernel-resources.md checkpoint-tests.txt step-cost-bf16.md \
        step-cost-fp16.md loss-kernel-bf16.md loss-kernel-fp16.md train-throughput.md loss-kernel-copies.md; do
        if [[ -s $out/$name ]]; then printf '### %s\n\n%s\n\n' "$name" "$(cat "$out/$name")"; fi
    done >"$bundle/gpu-report.md.part"
    mv "$bundle/gpu-report.md.part" "$bundle/gpu-report.md"
    tar -czf "$bundle/gpu-report.tar.gz.part" -C "$(dirname -- "$out")" "$(basename -- "$out")"
    mv "$bundle/gpu-report.tar.gz.part" "$bundle/gpu-report.tar.gz"
}

# a container's nvidia-smi can fail where CUDA works (NVML's version mismatch): torch names the device then
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader \
        >"$out/device.txt" 2>/dev/null; }; then
    "$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(), "(no nvidia-smi)")' >"$out/device.txt"
fi
cat "$out/device.txt"
"$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$out/device.txt" ||
    echo "warning: $PYTHON cannot import torch and triton: the fused kernels cannot run" | tee -a "$out/device.txt" >&2
gather
stamp kernel tests
# -o addopts=: pytest.ini's worker processes need pytest-xdist, which a device machine may lack
logged kernel-tests "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= tests/test_rdrop_loss_triton.py
tail -n 3 "$out/kernel-tests.log" | tee "$out/kernel-tests.txt"
gather
stamp "kernel resources"
arch=$("$PYTHON" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')
logged kernel-resources "$PYTHON" benchmarks/kernel_resources.py --arch "$arch" --dtype bf16 fp16 --copies 2
tables kernel-resources
gather
stamp "checkpoint written on CUDA"
logged checkpoint-tests "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= tests/test_safe_load.py -k written_on_cuda
tail -n 3 "$out/checkpoint-tests.log" | tee "$out/checkpoint-tests.txt"
gather
for shape in ${BF16_SHAPES-iwslt iwslt_full wmt wmt_full lm}; do
    stamp "step_cost $shape bf16"
    logged step-cost-bf16 "$PYTHON" benchmarks/step_cost.py --shape "$shape" --device cuda --dtype bf16 --repeats "$repeats"
    tables step-cost-bf16 >/dev/null
    gather
done
tables step-cost-bf16
for shape in ${FP16_SHAPES-iwslt iwslt_full wmt wmt_full lm}; do
    stamp "step_cost $shape fp16"
    logged step-cost-fp16 "$PYTHON" benchmarks/step_cost.py --shape "$shape" --device cuda --dtype fp16 --repeats "$repeats"
    tables step-cost-fp16 >/dev/null
    gather
done
tables step-cost-fp16
for dtype in bf16 fp16; do
    stamp "loss_kernel $dtype"
    logged "loss-kernel-$dtype" "$PYTHON" benchmarks/loss_kernel.py --dtype "$dtype" ${BLOCKS:+--blocks $BLOCKS}
    tables "loss-kernel-$dtype"
    gather
done
corpus=${CORPUS:-}
if [[ -z $corpus ]]; then  # where a device run carries it (../shared/device/README.md), else beside the checkout
    corpus=.corpus/lohelp-de-en
    [ -s "$corpus/train.de" ] || corpus=../shared/corpora/lohelp-de-en
fi
if [ "${THROUGHPUT_UPDATES:-150}" -gt 0 ] && [ ! -s "$corpus/train.de" ]; then
    echo "warning: no corpus at $corpus (set CORPUS; a device machine has ../shared only if carried): throughput skipped" >&2
    failed=2
elif [ "${THROUGHPUT_UPDATES:-150}" -gt 0 ]; then
    stamp train_throughput
    logged train-throughput "$PYTHON" benchmarks/train_throughput.py --corpus "$corpus" \
        ${WORK_DIR:+--work-dir "$WORK_DIR"} --updates "${THROUGHPUT_UPDATES:-150}" --rounds 2 --max-tokens 4096 \
        --extra=--fp16 --model "--arch transformer_iwslt_de_en --share-all-embeddings --dropout 0.3"
    grep -E '^(\||round|[0-9]+ updates)' "$out/train-throughput.log" | tee "$out/train-throughput.md" || true
fi
gather
# m > 2 (paper §4.3): where the fused kernels' cap on copies (rdrop_loss.MAX_FUSED_COPIES) should lie, as
# some compile with register spills in their vocabulary loop from m = 5 or 6 (kernel_resources.py --copies)
if [[ -n ${COPIES-3 4 5 6 7 8} ]]; then
    stamp "loss_kernel copies"
    logged loss-kernel-copies "$PYTHON" benchmarks/loss_kernel.py --shape wmt --dtype bf16 --repeats 5 --copies ${COPIES-3 4 5 6 7 8}
    tables loss-kernel-copies
    gather
fi
stamp done
exit "$failed"
