#!/usr/bin/env bash
# Train R-Drop on IWSLT14 de-en (transformer_iwslt_de_en, alpha 5; paper §3.1), or its baselines.
#
#   scripts/train-iwslt14.sh [--data DIR] [--save-dir DIR] [--alpha A] [--baseline | --double-batch]
#                            [--smoke] [--cpu] [--print-args] [-- FAIRSEQ_TRAIN_ARGS...]
#
# Arguments after `--` go to fairseq-train last, so they override anything set here.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/train-iwslt14.sh [options] [-- extra fairseq-train args]

  --data DIR        binarised IWSLT14 de-en       (env DATA; default $DATA_ROOT/data-bin/iwslt14.de-en,
                                                   DATA_ROOT defaults to data)
  --save-dir DIR    checkpoint folder             (env SAVE_DIR; default $CHECKPOINT_ROOT/iwslt14/<variant>,
                                                   CHECKPOINT_ROOT defaults to checkpoints)
  --alpha A         R-Drop KL weight              (env ALPHA; default 5)
  --baseline        stock task and criterion (translation, label_smoothed_cross_entropy)
  --double-batch    baseline with --max-tokens doubled (paper App. C.1)
  --smoke           a few CPU updates of a tiny model, to check the pipeline
  --cpu             train on CPU (also env CPU=1)
  --print-args      print the fairseq-train command instead of running it (also env DRY_RUN=1)

Hyperparameters (env): ARCH=transformer_iwslt_de_en LR=5e-4 WARMUP=4000 DROPOUT=0.3
  WEIGHT_DECAY=0.0001 LABEL_SMOOTHING=0.1 MAX_TOKENS=4096 UPDATE_FREQ=1 MAX_UPDATE=300000 SEED=1
  SAVE_INTERVAL_UPDATES=1000 KEEP_INTERVAL_UPDATES=10 LOG_INTERVAL=100 FP16=0 (auto|1|0)
  BEAM=5 (the beam of --eval-bleu's validation BLEU)
Distributed: torchrun --no-python ... scripts/train-iwslt14.sh (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*),
  or under SLURM srun with DISTRIBUTED_PORT=<port>.  Without them fairseq uses every visible GPU.
  The paper's batch is MAX_TOKENS on one GPU, as the authors trained: on several, each update reads
  that many times as much (the script says so; CUDA_VISIBLE_DEVICES=0 keeps the paper's batch).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_train_args "$@"
need_env positive WARMUP BEAM
need_env count MAX_UPDATE SAVE_INTERVAL_UPDATES
need_env int KEEP_INTERVAL_UPDATES
need_env fraction LABEL_SMOOTHING

ALPHA=${ALPHA:-5}
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/iwslt14.de-en}
SAVE_DIR=${SAVE_DIR:-$(default_save_dir iwslt14)}
if [[ $SMOKE == 1 ]]; then
    : "${MAX_UPDATE:=4}" "${WARMUP:=4}" "${LR:=1e-3}" "${MAX_TOKENS:=1024}" "${LOG_INTERVAL:=1}"
    : "${SAVE_INTERVAL_UPDATES:=2}" "${BEAM:=1}"
fi
[[ $PRINT_ARGS == 1 ]] || need_data_dir "$DATA"
MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-4096}")

TRAIN_ARGS=(
    "$DATA" --user-dir "$USER_DIR" --source-lang de --target-lang en
    --arch "${ARCH:-transformer_iwslt_de_en}" --share-all-embeddings
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr "${LR:-5e-4}" --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-4000}" --warmup-init-lr 1e-07
    --dropout "${DROPOUT:-0.3}" --weight-decay "${WEIGHT_DECAY:-0.0001}"
    --label-smoothing "${LABEL_SMOOTHING:-0.1}"
    --max-tokens "$MAX_TOKENS" --update-freq "${UPDATE_FREQ:-1}"
    --max-update "${MAX_UPDATE:-300000}" --seed "${SEED:-1}"
    --eval-bleu --eval-bleu-detok moses --eval-bleu-remove-bpe
    --eval-bleu-args "{\"beam\": ${BEAM:-5}, \"max_len_a\": 1.2, \"max_len_b\": 10}"
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
    --save-dir "$SAVE_DIR" --no-epoch-checkpoints
    --save-interval-updates "${SAVE_INTERVAL_UPDATES:-1000}" --keep-interval-updates "${KEEP_INTERVAL_UPDATES:-10}"
    --log-format json --log-interval "${LOG_INTERVAL:-100}"
)
variant_args rdrop_translation rdrop_label_smoothed_cross_entropy translation label_smoothed_cross_entropy
[[ $SMOKE == 1 ]] && TRAIN_ARGS+=("${SMOKE_TRANSLATION_MODEL[@]}")
[[ $CPU == 1 ]] && TRAIN_ARGS+=(--cpu)
want_fp16 0 && TRAIN_ARGS+=(--fp16)
distributed_args
gpus=$(world_size)
if ((gpus > 1)) && [[ ${RANK:-0} == 0 ]]; then
    printf '%s: note: fairseq-train will use %d GPUs, so each update reads %d times what one GPU reads (--max-tokens %s, --update-freq %s), where the paper'"'"'s runs read it on one GPU (the R-Drop authors trained with CUDA_VISIBLE_DEVICES=0) with this learning rate and warm-up; CUDA_VISIBLE_DEVICES=0 keeps the paper'"'"'s batch\n' \
        "$(basename "$0")" "$gpus" "$gpus" "$MAX_TOKENS" "${UPDATE_FREQ:-1}" >&2
fi
run_train
