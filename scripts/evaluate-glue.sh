#!/usr/bin/env bash
# Dev-set metrics of a GLUE fine-tuning run: fairseq-validate on the task's dev set(s)
# (MNLI: matched and mismatched), with the metrics the run was trained to report.
#
#   scripts/evaluate-glue.sh --task NAME --save-dir DIR [--data DIR] [--checkpoint FILE] [--cpu]
#                            [-- FAIRSEQ_VALIDATE_ARGS...]
#
# Writes into the save dir (or RESULTS_DIR): validate-<subsets>.log and glue-dev.json.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/evaluate-glue.sh --task NAME --save-dir DIR [options] [-- extra fairseq-validate args]

  --task NAME        MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA or STS-B (env GLUE_TASK)
  --data DIR         binarised task                 (env DATA; default $DATA_ROOT/data-bin/glue/<NAME>)
  --save-dir DIR     the fine-tuning run's checkpoints (env SAVE_DIR)
  --checkpoint FILE  score this checkpoint          (env CHECKPOINT; default <save-dir>/checkpoint_best.pt)
  --cpu              evaluate on CPU (also env CPU=1)

Env: BATCH_SIZE (default 32), RESULTS_DIR (default the save dir).
Output: {subset: {metric: value}}: loss and accuracy; CoLA mcc, MRPC/QQP f1,
STS-B pearson/spearman, as the run was trained to log them.  MNLI: valid is
dev_matched, valid1 dev_mismatched.
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

GLUE_TASK=${GLUE_TASK:-}
CPU=${CPU:-0}
need_0_or_1 CPU "$CPU"
CHECKPOINT=${CHECKPOINT:-}
EXTRA_ARGS=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --task) need_value "$@"; GLUE_TASK=$2; shift 2 ;;
        --data) need_value "$@"; DATA=$2; shift 2 ;;
        --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
        --checkpoint) need_value "$@"; CHECKPOINT=$2; shift 2 ;;
        --cpu) CPU=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case $GLUE_TASK in
    MNLI) SUBSETS=valid,valid1 ;;
    QNLI | QQP | RTE | SST-2 | MRPC | CoLA | STS-B) SUBSETS=valid ;;
    '') usage >&2; die "--task is required (MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA or STS-B)" ;;
    *) die "--task must be one of MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA, STS-B, not '$GLUE_TASK'" ;;
esac
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/glue/$GLUE_TASK}
need_glue_data "$DATA" "$GLUE_TASK"
need_env positive BATCH_SIZE
need_save_dir
need_checkpoint
need_command fairseq-validate

# fairseq-validate builds the task and criterion the checkpoint was trained with (rdrop_* or stock);
# --task and --criterion only let its parser take their options, such as -- --report-mcc, which then
# override the saved ones.
VALIDATE_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --path "$CHECKPOINT" --valid-subset "$SUBSETS"
    --task sentence_prediction --criterion sentence_prediction --batch-size "${BATCH_SIZE:-32}"
    --model-overrides "$("$PYTHON" -c 'import sys; print(repr({"data": sys.argv[1]}))' "$DATA")" --log-format json
)
[[ $CPU == 1 ]] && VALIDATE_ARGS+=(--cpu)
mkdir -p "$RESULTS_DIR"
log=$RESULTS_DIR/validate-${SUBSETS/,/-}.log
print_command fairseq-validate "${VALIDATE_ARGS[@]}" "${EXTRA_ARGS[@]}" | sed 's/^/+ /' >&2
fairseq-validate "${VALIDATE_ARGS[@]}" "${EXTRA_ARGS[@]}" >"$log.part" 2>&1 || { tail -n 20 "$log.part" >&2; die "fairseq-validate failed; see $log.part"; }
mv "$log.part" "$log"
echo "checkpoint: $CHECKPOINT"
"$PYTHON" -m rdrop_fairseq.recipes.validate_log "$log" --json "$RESULTS_DIR/glue-dev.json"
