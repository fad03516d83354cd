#!/usr/bin/env bash
# Fine-tune bart.large with R-Drop on CNN/DailyMail (alpha 0.7; paper §3.2), or its baselines,
# with the recipe of fairseq's examples/bart/README.summarization.md.
#
#   scripts/train-cnndm.sh [--data DIR] [--save-dir DIR] [--restore-file FILE] [--alpha A]
#                          [--baseline | --double-batch] [--smoke] [--cpu] [--print-args] [-- FAIRSEQ_TRAIN_ARGS...]
#
# Arguments after `--` go to fairseq-train last, so they override anything set here.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/train-cnndm.sh [options] [-- extra fairseq-train args]

  --data DIR          binarised CNN/DM              (env DATA; default $DATA_ROOT/data-bin/cnn_dm,
                                                     DATA_ROOT defaults to data)
  --save-dir DIR      checkpoint folder             (env SAVE_DIR; default $CHECKPOINT_ROOT/cnndm/<variant>,
                                                     CHECKPOINT_ROOT defaults to checkpoints)
  --restore-file FILE the pre-trained model.pt      (env BART_PATH; default: bart.large fetched into
                                                     $MODELS_DIR, default models, with
                                                     python -m rdrop_fairseq.recipes.datasets.pretrained;
                                                     it starts a run whose save dir has no checkpoint_last.pt;
                                                     a re-run resumes from there)
  --alpha A           R-Drop KL weight              (env ALPHA; default 0.7, the authors' value)
  --baseline          stock task and criterion (translation, label_smoothed_cross_entropy)
  --double-batch      baseline with --max-tokens doubled (paper App. C.1)
  --smoke             a few CPU updates of a tiny BART trained from scratch (unless --restore-file)
  --cpu               train on CPU (also env CPU=1)
  --print-args        print the fairseq-train command instead of running it (also env DRY_RUN=1)

Hyperparameters (env; defaults from README.summarization.md): LR=3e-05 MAX_TOKENS=2048 UPDATE_FREQ=4
  TOTAL_NUM_UPDATE=20000 WARMUP=500 DROPOUT=0.1 ATTENTION_DROPOUT=0.1 WEIGHT_DECAY=0.01
  LABEL_SMOOTHING=0.1 CLIP_NORM=0.1 SEED=1 LOG_INTERVAL=100 FP16=auto (auto|1|0)
The recipe's batch is 8 GPUs x MAX_TOKENS x UPDATE_FREQ; multiply UPDATE_FREQ by 8 / (your GPUs).
Distributed: torchrun --no-python ... scripts/train-cnndm.sh (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*),
  or under SLURM srun with DISTRIBUTED_PORT=<port>.  Without them fairseq uses every visible GPU.
USAGE
}

RESTORE=${BART_PATH:-}
parse_script_flag() {
    case $1 in
        --restore-file) need_value "$@"; RESTORE=$2; SCRIPT_FLAG_SHIFT=2 ;;
        *) return 1 ;;
    esac
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_train_args "$@"
need_env positive TOTAL_NUM_UPDATE
need_env count WARMUP
need_env number CLIP_NORM
need_env fraction ATTENTION_DROPOUT LABEL_SMOOTHING

ALPHA=${ALPHA:-0.7}
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/cnn_dm}
SAVE_DIR=${SAVE_DIR:-$(default_save_dir cnndm)}
if [[ $SMOKE == 1 ]]; then
    : "${TOTAL_NUM_UPDATE:=4}" "${WARMUP:=1}" "${LR:=1e-3}" "${MAX_TOKENS:=4096}" "${UPDATE_FREQ:=1}" "${LOG_INTERVAL:=1}"
fi
MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-2048}")
TOTAL_NUM_UPDATE=${TOTAL_NUM_UPDATE:-20000}
[[ $PRINT_ARGS == 1 ]] || need_data_dir "$DATA"

TRAIN_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --source-lang source --target-lang target --truncate-source
    --arch bart_large --layernorm-embedding --share-all-embeddings --share-decoder-input-output-embed
    --max-tokens "$MAX_TOKENS" --update-freq "${UPDATE_FREQ:-4}" --required-batch-size-multiple 1
    --label-smoothing "${LABEL_SMOOTHING:-0.1}"
    --dropout "${DROPOUT:-0.1}" --attention-dropout "${ATTENTION_DROPOUT:-0.1}" --weight-decay "${WEIGHT_DECAY:-0.01}"
    --optimizer adam --adam-betas '(0.9, 0.999)' --adam-eps 1e-08 --clip-norm "${CLIP_NORM:-0.1}"
    --lr-scheduler polynomial_decay --lr "${LR:-3e-05}"
    --total-num-update "$TOTAL_NUM_UPDATE" --warmup-updates "${WARMUP:-500}" --max-update "$TOTAL_NUM_UPDATE"
    --skip-invalid-size-inputs-valid-test --find-unused-parameters --seed "${SEED:-1}"
    --save-dir "$SAVE_DIR" --no-epoch-checkpoints --log-format json --log-interval "${LOG_INTERVAL:-100}"
)
variant_args rdrop_translation rdrop_label_smoothed_cross_entropy translation label_smoothed_cross_entropy
[[ $SMOKE == 1 ]] && TRAIN_ARGS+=("${SMOKE_TRANSLATION_MODEL[@]}")
[[ $CPU == 1 ]] && TRAIN_ARGS+=(--cpu)
want_fp16 auto && TRAIN_ARGS+=(--fp16)
distributed_args
finetune_from bart.large BART_PATH
run_train
