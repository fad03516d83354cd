#!/usr/bin/env bash
# Train R-Drop on WMT14 en-de (transformer_vaswani_wmt_en_de_big, alpha 5; paper §3.1), or its baselines.
#
#   scripts/train-wmt14.sh [--data DIR] [--save-dir DIR] [--alpha A] [--baseline | --double-batch]
#                          [--smoke] [--cpu] [--print-args] [-- FAIRSEQ_TRAIN_ARGS...]
#
# Arguments after `--` go to fairseq-train last, so they override anything set here.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/train-wmt14.sh [options] [-- extra fairseq-train args]

  --data DIR        binarised WMT14 en-de         (env DATA; default $DATA_ROOT/data-bin/wmt14.en-de,
                                                   DATA_ROOT defaults to data)
  --save-dir DIR    checkpoint folder             (env SAVE_DIR; default $CHECKPOINT_ROOT/wmt14/<variant>,
                                                   CHECKPOINT_ROOT defaults to checkpoints)
  --alpha A         R-Drop KL weight              (env ALPHA; default 5)
  --baseline        stock task and criterion (translation, label_smoothed_cross_entropy)
  --double-batch    baseline with --max-tokens doubled (paper App. C.1)
  --smoke           a few CPU updates of a tiny model, to check the pipeline
  --cpu             train on CPU (also env CPU=1)
  --print-args      print the fairseq-train command instead of running it (also env DRY_RUN=1)

Hyperparameters (env): ARCH=transformer_vaswani_wmt_en_de_big LR=1e-3 WARMUP=6000 DROPOUT=0.1
  WEIGHT_DECAY=0.0 LABEL_SMOOTHING=0.1 MAX_TOKENS=4096 UPDATE_FREQ=16 MAX_UPDATE=300000 SEED=1
  SAVE_INTERVAL_UPDATES=1000 KEEP_INTERVAL_UPDATES=10 LOG_INTERVAL=100 FP16=auto (on with CUDA; 1|0)
Distributed: torchrun --no-python ... scripts/train-wmt14.sh (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*),
  or under SLURM srun with DISTRIBUTED_PORT=<port>.  Without them fairseq uses every visible GPU.
  MAX_TOKENS x UPDATE_FREQ is per GPU (fairseq's scaling-NMT example runs it on 8): an epoch is roughly
  2,000 updates on one GPU, 260 on eight, so set MAX_UPDATE for yours (docs/reproduction.md).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_train_args "$@"
need_env positive WARMUP
need_env count MAX_UPDATE SAVE_INTERVAL_UPDATES
need_env int KEEP_INTERVAL_UPDATES
need_env fraction LABEL_SMOOTHING

ALPHA=${ALPHA:-5}
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/wmt14.en-de}
SAVE_DIR=${SAVE_DIR:-$(default_save_dir wmt14)}
if [[ $SMOKE == 1 ]]; then
    : "${MAX_UPDATE:=4}" "${WARMUP:=4}" "${MAX_TOKENS:=1024}" "${UPDATE_FREQ:=1}" "${LOG_INTERVAL:=1}"
    : "${SAVE_INTERVAL_UPDATES:=2}"
fi
[[ $PRINT_ARGS == 1 ]] || need_data_dir "$DATA"
MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-4096}")

TRAIN_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --source-lang en --target-lang de
    --arch "${ARCH:-transformer_vaswani_wmt_en_de_big}" --share-all-embeddings
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr "${LR:-1e-3}" --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-6000}" --warmup-init-lr 1e-07
    --dropout "${DROPOUT:-0.1}" --weight-decay "${WEIGHT_DECAY:-0.0}"
    --label-smoothing "${LABEL_SMOOTHING:-0.1}"
    --max-tokens "$MAX_TOKENS" --update-freq "${UPDATE_FREQ:-16}"
    --max-update "${MAX_UPDATE:-300000}" --seed "${SEED:-1}"
    --save-dir "$SAVE_DIR" --no-epoch-checkpoints
    --save-interval-updates "${SAVE_INTERVAL_UPDATES:-1000}" --keep-interval-updates "${KEEP_INTERVAL_UPDATES:-10}"
    --log-format json --log-interval "${LOG_INTERVAL:-100}"
)
variant_args rdrop_translation rdrop_label_smoothed_cross_entropy translation label_smoothed_cross_entropy
[[ $SMOKE == 1 ]] && TRAIN_ARGS+=("${SMOKE_TRANSLATION_MODEL[@]}")
[[ $CPU == 1 ]] && TRAIN_ARGS+=(--cpu)
want_fp16 auto && TRAIN_ARGS+=(--fp16)
distributed_args
run_train
