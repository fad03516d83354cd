#!/usr/bin/env bash
# Train an R-Drop language model on WikiText-103 (alpha 1.0; paper §3.4), or its baselines.
#
#   scripts/train-wikitext103.sh [--arch transformer_lm_gpt|transformer_lm | --adaptive] [--data DIR]
#                                [--save-dir DIR] [--alpha A] [--baseline | --double-batch]
#                                [--smoke] [--cpu] [--print-args] [-- FAIRSEQ_TRAIN_ARGS...]
#
# Arguments after `--` go to fairseq-train last, so they override anything set here.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/train-wikitext103.sh [options] [-- extra fairseq-train args]

  --arch NAME       transformer_lm_gpt (default: the paper's Transformer, as the authors trained it) or
                    transformer_lm (fairseq's smaller recipe model) (env ARCH)
  --adaptive        adaptive-input model: transformer_lm_wiki103 with rdrop_adaptive_loss and
                    fairseq's wiki103 adaptive-input recipe (nag, cosine, 3072 tokens per sample)
  --data DIR        binarised WikiText-103        (env DATA; default $DATA_ROOT/data-bin/wikitext-103,
                                                   DATA_ROOT defaults to data)
  --save-dir DIR    checkpoint folder             (env SAVE_DIR; default $CHECKPOINT_ROOT/wikitext103-<arch>/<variant>,
                                                   CHECKPOINT_ROOT defaults to checkpoints)
  --alpha A         R-Drop KL weight              (env ALPHA; default 1.0)
  --baseline        stock task and criterion (language_modeling, cross_entropy / adaptive_loss)
  --double-batch    baseline with --max-tokens doubled (paper App. C.1)
  --smoke           a few CPU updates of a tiny model, to check the pipeline
  --cpu             train on CPU (also env CPU=1)
  --print-args      print the fairseq-train command instead of running it (also env DRY_RUN=1)

Hyperparameters (env), the authors' (and fairseq's, but for MAX_TOKENS 2048): LR=5e-4 WARMUP=4000 DROPOUT=0.1
  WEIGHT_DECAY=0.01 TOKENS_PER_SAMPLE=512 MAX_TOKENS=2000 UPDATE_FREQ=16 MAX_UPDATE=50000 SEED=1
  --adaptive: LR=1.0 WARMUP=16000 TOKENS_PER_SAMPLE=3072 MAX_TOKENS=3072 UPDATE_FREQ=3 MAX_UPDATE=286000
  (its dropouts come with the arch, and it has no weight decay: DROPOUT and WEIGHT_DECAY set one if given)
  SAVE_INTERVAL_UPDATES=0 (off) KEEP_INTERVAL_UPDATES=1 LOG_INTERVAL=100 FP16=auto (on with CUDA; 1|0)
UPDATE_FREQ assumes eight GPUs, as the authors' runs (and fairseq's adaptive recipe) had: the batch is
  8 x MAX_TOKENS x UPDATE_FREQ, so on N GPUs set UPDATE_FREQ to 16 x 8 / N (adaptive: 3 x 8 / N).
Distributed: torchrun --no-python ... scripts/train-wikitext103.sh (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*),
  or under SLURM srun with DISTRIBUTED_PORT=<port>.  Without them fairseq uses every visible GPU.
USAGE
}

ADAPTIVE=0
parse_script_flag() {
    case $1 in
        --arch) need_value "$@"; ARCH=$2; SCRIPT_FLAG_SHIFT=2 ;;
        --adaptive) ADAPTIVE=1; SCRIPT_FLAG_SHIFT=1 ;;
        *) return 1 ;;
    esac
}

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_train_args "$@"
# inverse_sqrt divides by the warmup; the adaptive recipe's cosine schedule takes 0
if [[ $ADAPTIVE == 1 ]]; then need_env count WARMUP; else need_env positive WARMUP; fi
need_env positive TOKENS_PER_SAMPLE
need_env count MAX_UPDATE SAVE_INTERVAL_UPDATES
need_env int KEEP_INTERVAL_UPDATES

ALPHA=${ALPHA:-1.0}
if [[ $ADAPTIVE == 1 ]]; then
    [[ -z ${ARCH:-} || $ARCH == transformer_lm_wiki103 ]] || die "--adaptive trains transformer_lm_wiki103; drop --arch/ARCH=$ARCH"
    ARCH=transformer_lm_wiki103
else
    ARCH=${ARCH:-transformer_lm_gpt}
fi
DATA=${DATA:-${DATA_ROOT:-data}/data-bin/wikitext-103}
SAVE_DIR=${SAVE_DIR:-$(default_save_dir "wikitext103-$ARCH")}
if [[ $SMOKE == 1 ]]; then
    : "${MAX_UPDATE:=4}" "${WARMUP:=4}" "${TOKENS_PER_SAMPLE:=64}" "${MAX_TOKENS:=256}" "${UPDATE_FREQ:=1}"
    : "${LOG_INTERVAL:=1}" "${SAVE_INTERVAL_UPDATES:=2}"
    [[ $ADAPTIVE == 1 ]] || : "${LR:=1e-3}"
fi
[[ $PRINT_ARGS == 1 ]] || need_data_dir "$DATA"

TRAIN_ARGS=("$DATA" --user-dir "$USER_DIR" --arch "$ARCH" --sample-break-mode none)
if [[ $ADAPTIVE == 1 ]]; then
    MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-3072}")
    TRAIN_ARGS+=(
        --optimizer nag --clip-norm 0.1
        --lr "${LR:-1.0}" --lr-scheduler cosine --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75
        --warmup-updates "${WARMUP:-16000}" --warmup-init-lr 1e-07 --min-lr 0.0001 --stop-min-lr 1e-09
        --tokens-per-sample "${TOKENS_PER_SAMPLE:-3072}" --max-tokens "$MAX_TOKENS"
        --update-freq "${UPDATE_FREQ:-3}" --max-update "${MAX_UPDATE:-286000}"
        --skip-invalid-size-inputs-valid-test --ddp-backend legacy_ddp
        ${DROPOUT:+--dropout "$DROPOUT"} ${WEIGHT_DECAY:+--weight-decay "$WEIGHT_DECAY"}
    )
    variant_args rdrop_language_modeling rdrop_adaptive_loss language_modeling adaptive_loss
else
    MAX_TOKENS=$(variant_max_tokens "${MAX_TOKENS:-2000}")
    TRAIN_ARGS+=(
        --share-decoder-input-output-embed --dropout "${DROPOUT:-0.1}"
        --optimizer adam --adam-betas '(0.9, 0.98)' --weight-decay "${WEIGHT_DECAY:-0.01}" --clip-norm 0.0
        --lr "${LR:-5e-4}" --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-4000}" --warmup-init-lr 1e-07
        --tokens-per-sample "${TOKENS_PER_SAMPLE:-512}" --max-tokens "$MAX_TOKENS"
        --update-freq "${UPDATE_FREQ:-16}" --max-update "${MAX_UPDATE:-50000}"
    )
    variant_args rdrop_language_modeling rdrop_cross_entropy language_modeling cross_entropy
fi
TRAIN_ARGS+=(
    --seed "${SEED:-1}" --save-dir "$SAVE_DIR" --no-epoch-checkpoints
    --save-interval-updates "${SAVE_INTERVAL_UPDATES:-0}" --keep-interval-updates "${KEEP_INTERVAL_UPDATES:-1}"
    --log-format json --log-interval "${LOG_INTERVAL:-100}"
)
if [[ $SMOKE == 1 ]]; then
    TRAIN_ARGS+=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-ffn-embed-dim 64 --decoder-attention-heads 2
        --max-valid-steps 1)
    # The wiki103 cutoffs (20000,60000) exceed a small vocabulary; the input/output dims follow the embedding.
    [[ $ADAPTIVE == 1 ]] && TRAIN_ARGS+=(--adaptive-input-cutoff 50,200 --adaptive-softmax-cutoff 50,200
        --decoder-input-dim 32 --decoder-output-dim 32)
fi
[[ $CPU == 1 ]] && TRAIN_ARGS+=(--cpu)
want_fp16 auto && TRAIN_ARGS+=(--fp16)
distributed_args
run_train
