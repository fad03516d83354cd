#!/usr/bin/env bash
# The quickstart (scripts/quickstart.sh) on a device machine, whose command time is limited and of which only
# $OUT comes back: it runs on a carried corpus within LIMIT_S seconds, then copies into OUT_DIR what there is
# to report, also when the limit cut it off: the table (results.md, results.json), the curves, each run's
# train.log and the quickstart's own output (quickstart.log), with the device in device.txt.  Checkpoints
# stay in RUN_DIR (too large to bring back), so that a second call on the still-held machine reuses the
# runs that trained to their end and goes on with the others from their last checkpoint.  The exit status
# is the quickstart's (124: cut off by LIMIT_S).
#
# Usage: benchmarks/gpu-quickstart.sh [QUICKSTART OPTIONS...]     (e.g. --max-updates 2000)
# Env:   CORPUS    {train,valid,test}.{de,en} raw text (default .corpus/lohelp-de-en, copied from
#                  ../shared/corpora into the checkout, as the device machine has no ../shared)
#        WORK_DIR  the quickstart's --work-dir, its prepared-data cache (default .corpus/quickstart)
#        RUN_DIR   its --out-dir: runs and checkpoints (default rdrop-quickstart)
#        OUT_DIR   where the report goes (default: $OUT/gpu-quickstart where OUT is set, else gpu-quickstart)
#        LIMIT_S   seconds the quickstart may run (default 540)
#        CONCURRENT  1: both runs train at once (--concurrent; the default, so that one call has time for
#                  both on a GPU that one run leaves partly idle); 0: one after the other, e.g. with --minutes
#        PYTHON    interpreter with rdrop_fairseq's dependencies (default python3)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
corpus=${CORPUS:-.corpus/lohelp-de-en}
run_dir=${RUN_DIR:-rdrop-quickstart}
out=${OUT_DIR:-${OUT:+$OUT/}gpu-quickstart}
limit=${LIMIT_S:-540}
export PYTHON=${PYTHON:-python3}
[[ $limit =~ ^[1-9][0-9]*$ ]] || { echo "error: LIMIT_S must be a positive number of seconds, got '$limit'" >&2; exit 2; }
case "${CONCURRENT:-1}" in
    1) concurrent=(--concurrent) ;;
    0) concurrent=() ;;
    *) echo "error: CONCURRENT must be 1 or 0, got '$CONCURRENT'" >&2; exit 2 ;;
esac
[ -s "$corpus/train.de" ] || {
    echo "error: no corpus at CORPUS=$corpus (copy ../shared/corpora/lohelp-de-en there and carry it)" >&2; exit 2; }
mkdir -p "$out"
"$PYTHON" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
"| torch", torch.__version__)' | tee "$out/device.txt"

status=0
timeout -k 10 "$limit" bash "${QUICKSTART:-scripts/quickstart.sh}" --corpus "$corpus" --src de --tgt en \
    --work-dir "${WORK_DIR:-.corpus/quickstart}" --out-dir "$run_dir" ${concurrent[@]+"${concurrent[@]}"} "$@" >"$out/quickstart.log" 2>&1 || status=$?
tail -n 40 "$out/quickstart.log"
for file in results.md results.json curves.png; do
    [ ! -f "$run_dir/$file" ] || cp "$run_dir/$file" "$out/"
done
for run in rdrop baseline; do
    [ ! -f "$run_dir/$run/train.log" ] || cp "$run_dir/$run/train.log" "$out/$run-train.log"
done
if ((status == 124 || status == 137)); then
    echo "warning: the quickstart was cut off after LIMIT_S=$limit s; runs that trained to their end are kept in" \
         "$run_dir and a second call reuses them, and goes on with the others from their last checkpoint" >&2
elif ((status)); then
    echo "warning: the quickstart failed ($status); see $out/quickstart.log" >&2
fi
echo "report: $(ls "$out" | tr '\n' ' ')"
exit "$status"
