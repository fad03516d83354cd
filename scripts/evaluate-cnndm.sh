#!/usr/bin/env bash
# Score a CNN/DM run: summarise the test set with the generation settings of fairseq's
# examples/bart/summarize.py (beam 4, lenpen 2.0, max_len_b 140, min_len 55,
# no_repeat_ngram_size 3) and report ROUGE with the rouge-score package.
#
#   scripts/evaluate-cnndm.sh --save-dir DIR [--data DIR] [--gpt2-dir DIR] [--checkpoint FILE]
#                             [--subset test] [--cpu] [-- FAIRSEQ_GENERATE_ARGS...]
#
# Writes into the save dir (or RESULTS_DIR): generate-<subset>.txt and rouge-<subset>.json.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/evaluate-cnndm.sh --save-dir DIR [options] [-- extra fairseq-generate args]

  --data DIR         binarised CNN/DM               (env DATA; default $DATA_ROOT/data-bin/cnn_dm)
  --gpt2-dir DIR     encoder.json and vocab.bpe that encoded the data
                                                    (env GPT2_DIR; default $DATA_ROOT/cnn_dm/gpt2)
  --save-dir DIR     the fine-tuning run's checkpoints (env SAVE_DIR)
  --checkpoint FILE  score this checkpoint          (default <save-dir>/checkpoint_best.pt)
  --subset NAME      split to summarise             (env SUBSET; default test)
  --cpu              generate on CPU (also env CPU=1)

Env: BEAM=4 LENPEN=2.0 MAX_LEN_B=140 MIN_LEN=55 NO_REPEAT_NGRAM_SIZE=3 BATCH_SIZE=32,
     RESULTS_DIR (default the save dir).
Output: mean F1 of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (files2rouge's ROUGE-L), x100.
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SUBSET=${SUBSET:-test}
CPU=${CPU:-0}
need_0_or_1 CPU "$CPU"
CHECKPOINT=${CHECKPOINT:-}
EXTRA_ARGS=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --data) need_value "$@"; DATA=$2; shift 2 ;;
        --gpt2-dir) need_value "$@"; GPT2_DIR=$2; shift 2 ;;
        --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
        --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
        --subset) need_value "$@"; SUBSET=$2; shift 2 ;;
        --cpu) CPU=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

DATA=${DATA:-${DATA_ROOT:-data}/data-bin/cnn_dm}
GPT2_DIR=${GPT2_DIR:-${DATA_ROOT:-data}/cnn_dm/gpt2}
need_data_dir "$DATA"
[[ -f $GPT2_DIR/encoder.json && -f $GPT2_DIR/vocab.bpe ]] || die "--gpt2-dir: $GPT2_DIR has no encoder.json and vocab.bpe (scripts/prepare-cnndm.sh writes them to DATA_ROOT/cnn_dm/gpt2)"
need_save_dir
need_checkpoint
need_command fairseq-generate

GENERATE_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --path "$CHECKPOINT" --gen-subset "$SUBSET"
    --task translation --source-lang source --target-lang target --truncate-source
    --beam "${BEAM:-4}" --lenpen "${LENPEN:-2.0}" --max-len-b "${MAX_LEN_B:-140}" --min-len "${MIN_LEN:-55}"
    --no-repeat-ngram-size "${NO_REPEAT_NGRAM_SIZE:-3}" --batch-size "${BATCH_SIZE:-32}"
)
[[ $CPU == 1 ]] && GENERATE_ARGS+=(--cpu)
mkdir -p "$RESULTS_DIR"
out=$RESULTS_DIR/generate-$SUBSET.txt
print_command fairseq-generate "${GENERATE_ARGS[@]}" "${EXTRA_ARGS[@]}" | sed 's/^/+ /' >&2
fairseq-generate "${GENERATE_ARGS[@]}" "${EXTRA_ARGS[@]}" >"$out.part"
mv "$out.part" "$out"
echo "checkpoint: $CHECKPOINT"
python -m rdrop_fairseq.recipes.rouge "$out" --gpt2-dir "$GPT2_DIR" --json "$RESULTS_DIR/rouge-$SUBSET.json"
