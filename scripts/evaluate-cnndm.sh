#!/usr/bin/env bash
# Score a CNN/DM run: summarise the test articles as fairseq's examples/bart/summarize.py does,
# through BARTHubInterface (<s> article </s> in, <s> forced as the first summary token) with its
# settings (beam 4, lenpen 2.0, max_len_b 140, min_len 55, no_repeat_ngram_size 3), and report
# ROUGE against the untokenised references with the rouge-score package.
#
#   scripts/evaluate-cnndm.sh --save-dir DIR [--data DIR] [--text-dir DIR] [--gpt2-dir DIR]
#                             [--checkpoint FILE] [--subset test] [--cpu] [-- SUMMARIZE_ARGS...]
#
# Writes into the save dir (or RESULTS_DIR): <subset>.hypo and rouge-<subset>.json.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/evaluate-cnndm.sh --save-dir DIR [options] [-- extra python -m rdrop_fairseq.recipes.summarize args]

  --data DIR         binarised CNN/DM, for its dictionaries
                                                    (env DATA; default $DATA_ROOT/data-bin/cnn_dm)
  --text-dir DIR     untokenised {test,val}.{source,target}: the articles summarised and the references
                                                    (env TEXT_DIR; default $DATA_ROOT/cnn_dm)
  --gpt2-dir DIR     encoder.json and vocab.bpe that encoded the data
                                                    (env GPT2_DIR; default $DATA_ROOT/cnn_dm/gpt2)
  --save-dir DIR     the fine-tuning run's checkpoints (env SAVE_DIR)
  --checkpoint FILE  score this checkpoint          (env CHECKPOINT; default <save-dir>/checkpoint_best.pt)
  --subset NAME      split to summarise: test, or valid (val.*)  (env SUBSET; default test)
  --cpu              generate on CPU (also env CPU=1)

Decoding: BARTModel.from_pretrained(...).sample(...), as examples/bart/summarize.py: each article
is <s> + its GPT-2 BPE (cut to the model's 1,024 positions) + </s>; every summary starts with a
forced <s>, which min_len and max_len_b count.  Trigram blocking works without fairseq's CUDA extension.
Env: BEAM=4 LENPEN=2.0 MAX_LEN_B=140 MIN_LEN=55 NO_REPEAT_NGRAM_SIZE=3 BATCH_SIZE=32 (articles),
     FP16=auto (auto|1|0; auto: half precision on a GPU, as summarize.py), RESULTS_DIR (default the save dir).
Output: RESULTS_DIR/<subset>.hypo (one summary per line) and rouge-<subset>.json: mean F1 of ROUGE-1,
ROUGE-2, ROUGE-L and ROUGE-Lsum (files2rouge's ROUGE-L), x100, against the untokenised <split>.target.
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
        --text-dir) need_value "$@"; TEXT_DIR=$2; shift 2 ;;
        --gpt2-dir) need_value "$@"; GPT2_DIR=$2; shift 2 ;;
        --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
        --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
        --subset) need_value "$@"; SUBSET=$2; shift 2 ;;
        --cpu) CPU=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); has_arg --cpu "$@" && CPU=1; break ;;  # no --fp16 with it
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

DATA=${DATA:-${DATA_ROOT:-data}/data-bin/cnn_dm}
TEXT_DIR=${TEXT_DIR:-${DATA_ROOT:-data}/cnn_dm}
GPT2_DIR=${GPT2_DIR:-${DATA_ROOT:-data}/cnn_dm/gpt2}
case $SUBSET in
    test) TEXT_SPLIT=test ;;
    valid | val) TEXT_SPLIT=val ;;
    *) die "--subset must be test or valid, not '$SUBSET'" ;;
esac
need_env positive BEAM BATCH_SIZE MAX_LEN_B MIN_LEN
need_env count NO_REPEAT_NGRAM_SIZE
need_env real LENPEN
need_data_dir "$DATA"
for side in source target; do
    [[ -f $TEXT_DIR/$TEXT_SPLIT.$side ]] || die "--text-dir: $TEXT_DIR has no $TEXT_SPLIT.$side (scripts/prepare-cnndm.sh writes the untokenised text to DATA_ROOT/cnn_dm)"
done
[[ -f $GPT2_DIR/encoder.json && -f $GPT2_DIR/vocab.bpe ]] || die "--gpt2-dir: $GPT2_DIR has no encoder.json and vocab.bpe (scripts/prepare-cnndm.sh writes them to DATA_ROOT/cnn_dm/gpt2)"
need_save_dir
need_checkpoint

mkdir -p "$RESULTS_DIR"
out=$RESULTS_DIR/$SUBSET.hypo
SUMMARIZE_ARGS=(
    --checkpoint "$CHECKPOINT" --data "$DATA" --gpt2-dir "$GPT2_DIR"
    --source "$TEXT_DIR/$TEXT_SPLIT.source" --out "$out"
    --beam "${BEAM:-4}" --lenpen "${LENPEN:-2.0}" --max-len-b "${MAX_LEN_B:-140}" --min-len "${MIN_LEN:-55}"
    --no-repeat-ngram-size "${NO_REPEAT_NGRAM_SIZE:-3}" --batch-size "${BATCH_SIZE:-32}"
)
[[ $CPU == 1 ]] && SUMMARIZE_ARGS+=(--cpu)
want_fp16 auto && SUMMARIZE_ARGS+=(--fp16)
print_command "$PYTHON" -m rdrop_fairseq.recipes.summarize "${SUMMARIZE_ARGS[@]}" "${EXTRA_ARGS[@]}" | sed 's/^/+ /' >&2
# summarize writes $out under a temporary name and renames it once every summary is there.
"$PYTHON" -m rdrop_fairseq.recipes.summarize "${SUMMARIZE_ARGS[@]}" "${EXTRA_ARGS[@]}"
echo "checkpoint: $CHECKPOINT"
"$PYTHON" -m rdrop_fairseq.recipes.rouge "$out" --references "$TEXT_DIR/$TEXT_SPLIT.target" --json "$RESULTS_DIR/rouge-$SUBSET.json"
