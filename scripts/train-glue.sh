#!/usr/bin/env bash
# Fine-tune roberta.large with R-Drop on a GLUE task (paper §3.3), or its baselines, with the
# per-task hyperparameters of fairseq's examples/roberta/README.glue.md.
#
#   scripts/train-glue.sh --task NAME [--data DIR] [--save-dir DIR] [--restore-file FILE] [--alpha A]
#                         [--baseline | --double-batch] [--smoke] [--cpu] [--print-args] [-- FAIRSEQ_TRAIN_ARGS...]
#
# Arguments after `--` go to fairseq-train last, so they override anything set here.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/train-glue.sh --task NAME [options] [-- extra fairseq-train args]

  --task NAME         MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA or STS-B (env GLUE_TASK)
  --data DIR          binarised task                (env DATA; default $DATA_ROOT/data-bin/glue/<NAME>,
                                                     DATA_ROOT defaults to data)
  --save-dir DIR      checkpoint folder             (env SAVE_DIR; default $CHECKPOINT_ROOT/glue-<NAME>/<variant>,
                                                     CHECKPOINT_ROOT defaults to checkpoints)
  --restore-file FILE the pre-trained model.pt      (env ROBERTA_PATH; default: roberta.large fetched
                                                     into $MODELS_DIR, default models, with
                                                     python -m rdrop_fairseq.recipes.datasets.pretrained;
                                                     it starts a run whose save dir has no checkpoint_last.pt;
                                                     a re-run resumes from there)
  --alpha A           R-Drop weight                 (env ALPHA; default 1.0; the paper searched 0.1, 0.5, 1.0)
  --baseline          stock task and criterion (sentence_prediction)
  --double-batch      baseline with the batch doubled (paper App. C.1): BATCH_SIZE, MAX_TOKENS and
                      MAX_EPOCH x2, the same updates, so it reads as many sentences per update as
                      R-Drop's two passes (the other train-*.sh scripts' --double-batch too)
  --smoke             a few CPU updates of a tiny RoBERTa trained from scratch (unless --restore-file)
  --cpu               train on CPU (also env CPU=1)
  --print-args        print the fairseq-train command instead of running it (also env DRY_RUN=1)

Hyperparameters (env; defaults from README.glue.md's table for the task): LR, BATCH_SIZE,
  TOTAL_NUM_UPDATE, WARMUP, NUM_CLASSES; MAX_EPOCH=10 DROPOUT=0.1 ATTENTION_DROPOUT=0.1
  WEIGHT_DECAY=0.1 MAX_TOKENS=4400 UPDATE_FREQ=1 SEED=1 LOG_INTERVAL=100 FP16=auto (auto|1|0)
  With --double-batch, BATCH_SIZE, MAX_TOKENS and MAX_EPOCH from the env are still the
  single-batch values (doubled as above), so one set of env values gives matching --baseline
  and --double-batch runs; flags after `--` are passed on as they are.
Metrics logged on the dev set: accuracy; CoLA also MCC, MRPC and QQP F1, STS-B Pearson/Spearman.
  Not for --baseline/--double-batch on several GPUs: fairseq's sentence_prediction criterion
  then fails at validation with those --report-* flags, so they are left out (said on stderr);
  scripts/evaluate-glue.sh ... -- --report-mcc (or the task's flag) computes them afterwards.
Distributed: torchrun --no-python ... scripts/train-glue.sh (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*),
  or under SLURM srun with DISTRIBUTED_PORT=<port>.  Without them fairseq uses every visible GPU.
  The table's batch sizes are for one GPU: on several, set BATCH_SIZE per GPU (the script refuses
  to start otherwise, as --max-epoch would end the run early).
USAGE
}

GLUE_TASK=${GLUE_TASK:-}
RESTORE=${ROBERTA_PATH:-}
parse_script_flag() {
    case $1 in
        --task) need_value "$@"; GLUE_TASK=$2; SCRIPT_FLAG_SHIFT=2 ;;
        --restore-file) need_value "$@"; RESTORE=$2; SCRIPT_FLAG_SHIFT=2 ;;
        *) return 1 ;;
    esac
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_train_args "$@"
need_env positive BATCH_SIZE TOTAL_NUM_UPDATE MAX_EPOCH NUM_CLASSES
need_env count WARMUP
need_env fraction ATTENTION_DROPOUT

# README.glue.md: --num-classes, --lr, --max-sentences, --total-num-update, --warmup-updates.
case $GLUE_TASK in
    MNLI) task_hparams=(3 1e-5 32 123873 7432) ;;
    QNLI) task_hparams=(2 1e-5 32 33112 1986) ;;
    QQP) task_hparams=(2 1e-5 32 113272 28318) ;;
    RTE) task_hparams=(2 2e-5 16 2036 122) ;;
    SST-2) task_hparams=(2 1e-5 32 20935 1256) ;;
    MRPC) task_hparams=(2 1e-5 16 2296 137) ;;
    CoLA) task_hparams=(2 1e-5 16 5336 320) ;;
    STS-B) task_hparams=(1 2e-5 16 3598 214) ;;
    '') usage >&2; die "--task is required (MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA or STS-B)" ;;
    *) die "--task must be one of MNLI, QNLI, QQP, RTE, SST-2, MRPC, CoLA, STS-B, not '$GLUE_TASK'" ;;
esac
ALPHA=${ALPHA:-1.0}
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/glue/$GLUE_TASK}
SAVE_DIR=${SAVE_DIR:-$(default_save_dir "glue-$GLUE_TASK")}
if [[ $SMOKE == 1 ]]; then
    : "${TOTAL_NUM_UPDATE:=4}" "${WARMUP:=1}" "${BATCH_SIZE:=8}" "${LR:=1e-3}" "${LOG_INTERVAL:=1}" "${MAX_EPOCH:=1}"
fi
BATCH_SIZE_GIVEN=${BATCH_SIZE:+1}
BATCH_SIZE=${BATCH_SIZE:-${task_hparams[2]}}
TOTAL_NUM_UPDATE=${TOTAL_NUM_UPDATE:-${task_hparams[3]}}
WARMUP=${WARMUP:-${task_hparams[4]}}
# --double-batch: twice the sentences (and tokens) per update for the same updates, R-Drop's
# cost; twice the epochs then, or --max-epoch would stop it half-way down the LR schedule.
BATCH_SIZE=$(variant_max_tokens "$BATCH_SIZE")
MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-4400}")
MAX_EPOCH=${MAX_EPOCH:-10}
MAX_EPOCH=$(variant_max_tokens "$MAX_EPOCH")
[[ $PRINT_ARGS == 1 ]] || need_glue_data "$DATA" "$GLUE_TASK"

TRAIN_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --arch roberta_large
    --num-classes "${NUM_CLASSES:-${task_hparams[0]}}" --max-positions 512 --init-token 0 --separator-token 2
    --batch-size "$BATCH_SIZE" --max-tokens "$MAX_TOKENS" --update-freq "${UPDATE_FREQ:-1}"
    --required-batch-size-multiple 1
    --dropout "${DROPOUT:-0.1}" --attention-dropout "${ATTENTION_DROPOUT:-0.1}" --weight-decay "${WEIGHT_DECAY:-0.1}"
    --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-06 --clip-norm 0.0
    --lr-scheduler polynomial_decay --lr "${LR:-${task_hparams[1]}}"
    --total-num-update "$TOTAL_NUM_UPDATE" --warmup-updates "$WARMUP"
    --max-update "$TOTAL_NUM_UPDATE" --max-epoch "$MAX_EPOCH" --seed "${SEED:-1}" --find-unused-parameters
    --save-dir "$SAVE_DIR" --no-epoch-checkpoints --log-format json --log-interval "${LOG_INTERVAL:-100}"
)
case $GLUE_TASK in
    STS-B) TRAIN_ARGS+=(--regression-target --best-checkpoint-metric loss) ;;
    *) TRAIN_ARGS+=(--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric) ;;
esac
case $GLUE_TASK in
    CoLA) REPORT_FLAG=--report-mcc ;;
    MRPC | QQP) REPORT_FLAG=--report-acc-and-f1 ;;
    STS-B) REPORT_FLAG=--report-pearson-and-spearman ;;
    *) REPORT_FLAG= ;;
esac

variant_args rdrop_sentence_prediction rdrop_sentence_prediction sentence_prediction sentence_prediction
[[ $SMOKE == 1 ]] && TRAIN_ARGS+=(
    --encoder-layers 1 --encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --encoder-attention-heads 2
)
[[ $CPU == 1 ]] && TRAIN_ARGS+=(--cpu)
want_fp16 auto && TRAIN_ARGS+=(--fp16 --fp16-init-scale 4 --threshold-loss-scale 1 --fp16-scale-window 128)
distributed_args

# The table's batch sizes are per update on one GPU; on N, each update reads N times as many sentences
# and --max-epoch ends the run after about 1/N of --total-num-update, the LR still near its peak.
gpus=$(world_size)
if ((gpus > 1)) && [[ -z $BATCH_SIZE_GIVEN ]] && ! [[ " ${EXTRA_ARGS[*]} " =~ \ --(batch-size|max-sentences)[=\ ] ]]; then
    die "README.glue.md's batch size for $GLUE_TASK (${task_hparams[2]}) is for one GPU, and fairseq-train would use $gpus: \
each update would read $gpus times as many sentences and --max-epoch $MAX_EPOCH would end the run after about 1/$gpus \
of its $TOTAL_NUM_UPDATE updates. Set BATCH_SIZE per GPU (BATCH_SIZE=$(( (task_hparams[2] + gpus - 1) / gpus )) keeps \
the table's batch), or train on one GPU (CUDA_VISIBLE_DEVICES=0)"
fi
# fairseq 0.12.3.1's sentence_prediction keeps per-example predictions in its validation logs
# with these flags but says the logs can be summed, so on several GPUs its validation fails
# (the trainer sums the lists).  rdrop_sentence_prediction gathers them instead.
if [[ -n $REPORT_FLAG && $VARIANT != rdrop ]] && ((gpus > 1)); then
    printf '%s: note: %s left out: fairseq'"'"'s sentence_prediction criterion (--baseline/--double-batch) fails with it on several GPUs; for the metric run scripts/evaluate-glue.sh --task %s --save-dir %q -- %s afterwards\n' \
        "$(basename "$0")" "$REPORT_FLAG" "$GLUE_TASK" "$SAVE_DIR" "$REPORT_FLAG" >&2
    REPORT_FLAG=
fi
[[ -n $REPORT_FLAG ]] && TRAIN_ARGS+=("$REPORT_FLAG")
finetune_from roberta.large ROBERTA_PATH
run_train
