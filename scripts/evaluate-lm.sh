#!/usr/bin/env bash
# Score a WikiText-103 language model: fairseq-eval-lm perplexity with the paper's context window.
#
#   scripts/evaluate-lm.sh --save-dir DIR [--adaptive] [--data DIR] [--checkpoint FILE] [--subset test]
#                          [--smoke] [--cpu] [-- FAIRSEQ_EVAL_LM_ARGS...]
#
# Writes eval-lm-<subset>.txt and perplexity-<subset>.json into the save dir.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/evaluate-lm.sh --save-dir DIR [options] [-- extra fairseq-eval-lm args]

  --save-dir DIR     the training run's checkpoints (env SAVE_DIR)
  --adaptive         adaptive-input model: --sample-break-mode complete --max-tokens 3072
                     --tokens-per-sample 3072 --context-window 2560 --softmax-batch 1024
                     (fairseq's evaluation of its wiki103 adaptive-input model);
                     otherwise --batch-size 2 --tokens-per-sample 512 --context-window 400
  --data DIR         binarised WikiText-103         (env DATA; default $DATA_ROOT/data-bin/wikitext-103)
  --checkpoint FILE  checkpoint to score            (env CHECKPOINT; default <save dir>/checkpoint_best.pt)
  --subset NAME      split to score                 (env SUBSET; default test)
  --smoke            windows small enough for a --smoke model (64 tokens, context 32), on CPU
  --cpu              evaluate on CPU (also env CPU=1)

Env: TOKENS_PER_SAMPLE, CONTEXT_WINDOW (below TOKENS_PER_SAMPLE; both go into the JSON),
  RESULTS_DIR (default the save dir).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ADAPTIVE=0
SUBSET=${SUBSET:-test}
CPU=${CPU:-0}
need_0_or_1 CPU "$CPU"
CHECKPOINT=${CHECKPOINT:-}
EXTRA_ARGS=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
        --adaptive) ADAPTIVE=1; shift ;;
        --data) need_value "$@"; DATA=$2; shift 2 ;;
        --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
        --subset) need_value "$@"; SUBSET=$2; shift 2 ;;
        --smoke) CPU=1; : "${TOKENS_PER_SAMPLE:=64}" "${CONTEXT_WINDOW:=32}"; shift ;;
        --cpu) CPU=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

DATA=${DATA:-${DATA_ROOT:-data}/data-bin/wikitext-103}
need_data_dir "$DATA"
need_save_dir
need_checkpoint
need_command fairseq-eval-lm

# a window given after -- reaches fairseq last, so it wins: check and record that one
if value=$(last_value --tokens-per-sample "${EXTRA_ARGS[@]}"); then TOKENS_PER_SAMPLE=$value; fi
if value=$(last_value --context-window "${EXTRA_ARGS[@]}"); then CONTEXT_WINDOW=$value; fi
need_env positive TOKENS_PER_SAMPLE
need_env count CONTEXT_WINDOW
EVAL_ARGS=("$DATA" --user-dir "$USER_DIR" --path "$CHECKPOINT" --gen-subset "$SUBSET")
if [[ $ADAPTIVE == 1 ]]; then
    TOKENS_PER_SAMPLE=${TOKENS_PER_SAMPLE:-3072} CONTEXT_WINDOW=${CONTEXT_WINDOW:-2560}
    EVAL_ARGS+=(--sample-break-mode complete --max-tokens 3072 --softmax-batch 1024)
else
    TOKENS_PER_SAMPLE=${TOKENS_PER_SAMPLE:-512} CONTEXT_WINDOW=${CONTEXT_WINDOW:-400}
    EVAL_ARGS+=(--batch-size 2)
fi
# each block scores its last TOKENS_PER_SAMPLE - CONTEXT_WINDOW tokens
((CONTEXT_WINDOW < TOKENS_PER_SAMPLE)) \
    || die "CONTEXT_WINDOW ($CONTEXT_WINDOW) must be below TOKENS_PER_SAMPLE ($TOKENS_PER_SAMPLE)"
EVAL_ARGS+=(--tokens-per-sample "$TOKENS_PER_SAMPLE" --context-window "$CONTEXT_WINDOW")
[[ $CPU == 1 ]] && EVAL_ARGS+=(--cpu)
mkdir -p "$RESULTS_DIR"
log=$RESULTS_DIR/eval-lm-$SUBSET.txt
print_command fairseq-eval-lm "${EVAL_ARGS[@]}" "${EXTRA_ARGS[@]}" | sed 's/^/+ /' >&2
fairseq-eval-lm "${EVAL_ARGS[@]}" "${EXTRA_ARGS[@]}" >"$log.part" 2>&1 || { cat "$log.part" >&2; die "fairseq-eval-lm failed"; }
mv "$log.part" "$log"

# fairseq-eval-lm logs: "Loss (base 2): 4.1234, Perplexity: 17.42" (nan or inf for a diverged model)
result=$(grep -oE 'Loss \(base 2\): [^,]+, Perplexity: [^ ]+' "$log" | tail -n 1) \
    || die "no perplexity line in $log"
grep -qE '^Loss \(base 2\): [0-9.]+, Perplexity: [0-9.]+$' <<<"$result" \
    || die "fairseq-eval-lm reports '$result' in $log: the model's loss is not finite (a diverged checkpoint?)"
loss=$(sed -E 's/.*: ([0-9.]+), .*/\1/' <<<"$result")
ppl=$(sed -E 's/.*Perplexity: ([0-9.]+)/\1/' <<<"$result")
json=$RESULTS_DIR/perplexity-$SUBSET.json
# json.dumps: a path may hold a quote or a backslash
"$PYTHON" -c 'import json, sys
print(json.dumps({"checkpoint": sys.argv[1], "subset": sys.argv[2], "loss_base2": float(sys.argv[3]),
                  "perplexity": float(sys.argv[4]), "tokens_per_sample": int(sys.argv[5]),
                  "context_window": int(sys.argv[6])}))' \
    "$CHECKPOINT" "$SUBSET" "$loss" "$ppl" "$TOKENS_PER_SAMPLE" "$CONTEXT_WINDOW" >"$json.part"
mv "$json.part" "$json"
echo "checkpoint: $CHECKPOINT"
echo "$SUBSET perplexity = $ppl (loss $loss bits/token)"
