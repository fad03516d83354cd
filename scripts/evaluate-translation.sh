#!/usr/bin/env bash
# Score a translation run: average its last N checkpoints (IWSLT14: take its best), fairseq-generate the test
# set, report BLEU.
#
#   scripts/evaluate-translation.sh --setup iwslt14|wmt14 [--data DIR] --save-dir DIR [--average N]
#                                   [--checkpoint FILE] [--subset test] [--cpu] [-- FAIRSEQ_GENERATE_ARGS...]
#
# Writes into the save dir: checkpoint.avg<N>.pt, generate-<subset>.txt and bleu-<subset>.json.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/evaluate-translation.sh --setup iwslt14|wmt14 --save-dir DIR [options] [-- extra fairseq-generate args]

  --setup NAME       iwslt14 (de->en, beam 5, lowercased compound-split tokenized BLEU, as the R-Drop
                     authors scored it) or wmt14 (en->de, beam 4, lenpen 0.6, compound-split tokenized BLEU)
  --data DIR         binarised data                 (env DATA; default $DATA_ROOT/data-bin/<iwslt14.de-en|wmt14.en-de>)
  --save-dir DIR     the training run's checkpoints (env SAVE_DIR)
  --average N        average the last N update checkpoints (checkpoint_<epoch>_<update>.pt,
                     written by --save-interval-updates), or 1: score checkpoint_best.pt (env AVERAGE;
                     default: iwslt14 1, the best by validation BLEU as the authors scored it; wmt14 5)
  --checkpoint FILE  score this checkpoint instead (env CHECKPOINT; not with --average)
  --subset NAME      split to translate             (env SUBSET; default test)
  --cpu              generate on CPU (also env CPU=1)

Env: BEAM, LENPEN, MAX_TOKENS (default 8192), RESULTS_DIR (default the save dir),
     REMOVE_BPE (default subword_nmt; sentencepiece for data prepared with it, whose untokenised
     output is Moses-tokenised for the tokenized BLEU).
Output: detokenized sacreBLEU with its signature, the tokenized BLEU of the paper, and the tokenized BLEU
without the compound split (fairseq-generate's own convention).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SETUP=${SETUP:-}
AVERAGE=${AVERAGE:-}
SUBSET=${SUBSET:-test}
CPU=${CPU:-0}
need_0_or_1 CPU "$CPU"
CHECKPOINT=${CHECKPOINT:-}
EXTRA_ARGS=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --setup) need_value "$@"; SETUP=$2; shift 2 ;;
        --data) need_value "$@"; DATA=$2; shift 2 ;;
        --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
        --average) need_value "$@"; AVERAGE=$2; shift 2 ;;
        --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
        --subset) need_value "$@"; SUBSET=$2; shift 2 ;;
        --cpu) CPU=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

[[ -n $CHECKPOINT && -n $AVERAGE ]] && die "--checkpoint and --average (or CHECKPOINT and AVERAGE) name two checkpoints to score: give one"
case $SETUP in
    iwslt14)
        SRC=de; TGT=en; DATA_NAME=iwslt14.de-en; SCORE_ARGS=(--lowercase --compound-split)
        : "${BEAM:=5}" "${LENPEN:=1}" "${AVERAGE:=1}"
        ;;
    wmt14)
        SRC=en; TGT=de; DATA_NAME=wmt14.en-de; SCORE_ARGS=(--compound-split)
        : "${BEAM:=4}" "${LENPEN:=0.6}" "${AVERAGE:=5}"
        ;;
    '') usage >&2; die "--setup is required (iwslt14 or wmt14)" ;;
    *) die "--setup must be iwslt14 or wmt14, not '$SETUP'" ;;
esac
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/$DATA_NAME}
need_env positive BEAM MAX_TOKENS
need_env real LENPEN
need_data_dir "$DATA"
need_save_dir
[[ $AVERAGE =~ ^[1-9][0-9]*$ ]] || die "--average must be a positive integer, not '$AVERAGE'"
need_command fairseq-generate

if [[ -n $CHECKPOINT ]]; then
    [[ -f $CHECKPOINT ]] || die "--checkpoint (or CHECKPOINT): no such file: $CHECKPOINT"
elif [[ $AVERAGE == 1 ]]; then
    CHECKPOINT=$SAVE_DIR/checkpoint_best.pt
    [[ -f $CHECKPOINT ]] || die "--average 1 scores $CHECKPOINT, which does not exist"
else
    CHECKPOINT=$SAVE_DIR/checkpoint.avg$AVERAGE.pt
    "$PYTHON" -m rdrop_fairseq.recipes.average_checkpoints --save-dir "$SAVE_DIR" --last "$AVERAGE" --output "$CHECKPOINT"
fi

GENERATE_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --path "$CHECKPOINT" --gen-subset "$SUBSET"
    --source-lang "$SRC" --target-lang "$TGT"
    --beam "$BEAM" --lenpen "$LENPEN" --max-tokens "${MAX_TOKENS:-8192}" --remove-bpe "${REMOVE_BPE:-subword_nmt}"
)
[[ $CPU == 1 ]] && GENERATE_ARGS+=(--cpu)
mkdir -p "$RESULTS_DIR"
out=$RESULTS_DIR/generate-$SUBSET.txt
print_command fairseq-generate "${GENERATE_ARGS[@]}" "${EXTRA_ARGS[@]}" | sed 's/^/+ /' >&2
fairseq-generate "${GENERATE_ARGS[@]}" "${EXTRA_ARGS[@]}" >"$out.part" || die "fairseq-generate failed (its error is above); \
its partial output is $out.part"
mv "$out.part" "$out"
grep -E '^Generate .* BLEU4 = ' "$out" >&2 || true
echo "checkpoint: $CHECKPOINT"
[[ ${REMOVE_BPE:-subword_nmt} == sentencepiece ]] && SCORE_ARGS+=(--raw-text)
"$PYTHON" -m rdrop_fairseq.recipes.bleu "$out" --lang "$TGT" "${SCORE_ARGS[@]}" --json "$RESULTS_DIR/bleu-$SUBSET.json"
