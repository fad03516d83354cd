# Shared by scripts/prepare-*.sh, train-*.sh and evaluate-*.sh: sourced, never run.
# The train and evaluate scripts define usage() before sourcing.

REPO_DIR=$(CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)  # CDPATH= : cd prints, and may go elsewhere
USER_DIR=${USER_DIR:-$REPO_DIR/rdrop_fairseq}
# python -m rdrop_fairseq.* from a checkout that is not installed.
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 2
}

# the interpreter of every python -m / -c step (fairseq-* are console scripts with their own): PYTHON, else
# python, else python3.  Sourced, this file sees the script's arguments: --help needs no interpreter.
if [[ -n ${PYTHON:-} ]]; then
    [[ " $* " == *" -h "* || " $* " == *" --help "* ]] || command -v "$PYTHON" >/dev/null \
        || die "PYTHON=$PYTHON: no such command"
else
    PYTHON=python
    command -v python >/dev/null || ! command -v python3 >/dev/null || PYTHON=python3
fi

# need_value FLAG [VALUE...]: FLAG must be followed by a non-empty value.
need_value() {
    [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"
}

need_0_or_1() {  # need_0_or_1 NAME VALUE: an on/off environment variable
    [[ $2 == 0 || $2 == 1 ]] || die "$1 must be 0 or 1, not '$2'"
}

need_number() {  # need_number NAME VALUE
    [[ $2 =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$1 must be a non-negative number, not '$2'"
}

# need_env KIND NAME...: each NAME that is set (the defaults are right by construction) must be a
# positive (integer >= 1), positives (one or a comma-separated list, as fairseq's --update-freq takes),
# count (integer >= 0), int (integer >= -1, fairseq's "all"), number (>= 0), real (any number) or
# fraction (a number below 1: a dropout or smoothing rate); fairseq would take most of them as they are
# and fail later with a traceback, or not at all.  Integers have no leading zeros, which bash's
# arithmetic would read as octal.
need_env() {
    local kind=$1 name value
    shift
    for name; do
        value=${!name:-}
        [[ -n $value ]] || continue
        case $kind in
            positive) [[ $value =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '$value'" ;;
            positives) [[ $value =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
                || die "$name must be a positive integer or a comma-separated list of them, not '$value'" ;;
            count) [[ $value =~ ^(0|[1-9][0-9]*)$ ]] || die "$name must be an integer >= 0, not '$value'" ;;
            int) [[ $value =~ ^(-1|0|[1-9][0-9]*)$ ]] || die "$name must be an integer >= -1, not '$value'" ;;
            number) need_number "$name" "$value" ;;
            real) [[ $value =~ ^[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$name must be a number, not '$value'" ;;
            fraction)
                need_number "$name" "$value"
                awk -v value="$value" 'BEGIN { exit !(value + 0 < 1) }' || die "$name must be a number below 1, not '$value'"
                ;;
            *) die "need_env: unknown kind '$kind'" ;;
        esac
    done
}

need_command() {
    command -v "$1" >/dev/null || die "'$1' not found on PATH: activate the environment that has fairseq installed"
}

# has_arg NAME ARGS...: whether NAME is one of ARGS.
has_arg() {
    local name=$1 arg
    shift
    for arg; do [[ $arg == "$name" ]] && return 0; done
    return 1
}

# last_value NAME ARGS...: print the value the last NAME of ARGS gives (NAME VALUE or NAME=VALUE), the one
# argparse keeps; status 1 where NAME is not among them.
last_value() {
    local name=$1 value= found=1
    shift
    while (($#)); do
        case $1 in
            "$name") value=${2:-}; found=0 ;;
            "$name"=*) value=${1#*=}; found=0 ;;
        esac
        shift
    done
    printf '%s' "$value"
    return "$found"
}

cuda_available() {
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

# want_fp16 DEFAULT: FP16=auto uses fp16 exactly when CUDA is present and --cpu is not; FP16=1 with --cpu
# is refused (fairseq would put the model in fp16 on the CPU).
want_fp16() {
    case ${FP16:-$1} in
        1) [[ $CPU != 1 ]] || die "FP16=1 asks for --fp16, which is for CUDA, but --cpu (or CPU=1) runs on the CPU: drop one of them"
           return 0 ;;
        0) return 1 ;;
        auto) [[ $CPU != 1 ]] && cuda_available ;;
        *) die "FP16 must be auto, 1 or 0, not '${FP16}'" ;;
    esac
}

# Binarised data: fairseq-preprocess always writes at least one dict*.txt.
need_data_dir() {
    [[ -d $1 ]] || die "--data: no such folder: $1 (run the matching scripts/prepare-*.sh, or pass --data)"
    compgen -G "$1/dict*.txt" >/dev/null || die "--data: $1 has no dict*.txt: not a fairseq-preprocess output folder"
}

# need_glue_data DIR TASK: prepare-glue.sh's output for TASK, inputs and labels (an interrupted
# preparation can leave the inputs without the labels).
need_glue_data() {
    local labels=label/dict.txt
    [[ $2 == STS-B ]] && labels=label/train.label  # scores, not classes: no dictionary
    local file
    for file in input0/dict.txt "$labels"; do
        [[ -f $1/$file ]] || die "--data: $1 has no $file: run scripts/prepare-glue.sh --task $2, or pass --data"
    done
}

# An evaluation's --save-dir: given and a folder; RESULTS_DIR defaults to it.
need_save_dir() {
    [[ -n ${SAVE_DIR:-} ]] || die "--save-dir is required"
    [[ -d $SAVE_DIR ]] || die "--save-dir: no such folder: $SAVE_DIR"
    RESULTS_DIR=${RESULTS_DIR:-$SAVE_DIR}
}

# The checkpoint to score: --checkpoint (or CHECKPOINT), else the save dir's checkpoint_best.pt; it must exist.
need_checkpoint() {
    CHECKPOINT=${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}
    [[ -f $CHECKPOINT ]] || die "--checkpoint (or CHECKPOINT): no such file: $CHECKPOINT"
}

# scripts/prepare-*.sh: the script's header comment is its --help; the work is python -m MODULE.
run_prepare() {
    local module=$1
    shift
    case ${1:-} in
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    esac
    # its errors and usage line then name the script the user ran, not the module
    RDROP_SCRIPT_PROG="scripts/$(basename "$0")" exec "$PYTHON" -m "$module" "$@"
}

# One shell-quoted line, ready to paste.
print_command() {
    printf '%q ' "$@"
    echo
}

# ---------------------------------------------------------------- training

# Flags every train script takes.  Script-specific flags go to parse_script_flag,
# which returns 0 and sets SCRIPT_FLAG_SHIFT when it consumed "$1".
parse_train_args() {
    VARIANT=rdrop
    SMOKE=${SMOKE:-0}
    CPU=${CPU:-0}
    PRINT_ARGS=${DRY_RUN:-0}
    need_0_or_1 SMOKE "$SMOKE"
    need_0_or_1 CPU "$CPU"
    need_0_or_1 DRY_RUN "$PRINT_ARGS"
    EXTRA_ARGS=()
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --data) need_value "$@"; DATA=$2; shift 2 ;;
            --save-dir) need_value "$@"; SAVE_DIR=$2; shift 2 ;;
            --alpha) need_value "$@"; ALPHA=$2; shift 2 ;;
            --baseline) [[ $VARIANT == baseline-2x ]] || VARIANT=baseline; shift ;;
            --double-batch) VARIANT=baseline-2x; shift ;;
            --smoke) SMOKE=1; CPU=1; shift ;;
            --cpu) CPU=1; shift ;;
            --print-args | --dry-run) PRINT_ARGS=1; shift ;;
            # a --cpu passed on to fairseq is the script's --cpu too: no --fp16, gloo when distributed
            --) shift; EXTRA_ARGS=("$@"); has_arg --cpu "$@" && CPU=1; break ;;
            *)
                if declare -F parse_script_flag >/dev/null && parse_script_flag "$@"; then
                    shift "$SCRIPT_FLAG_SHIFT"
                else
                    usage >&2
                    die "unknown option '$1'"
                fi
                ;;
        esac
    done
    [[ $SMOKE == 1 ]] && CPU=1
    # the hyperparameters every train script reads; each checks its own others
    need_env positive LOG_INTERVAL
    need_env positives UPDATE_FREQ
    need_env count SEED
    need_env number LR WEIGHT_DECAY
    need_env fraction DROPOUT
    if [[ $VARIANT != rdrop && -n ${ALPHA:-} ]]; then
        die "--alpha/ALPHA is the R-Drop weight; it has no meaning with --baseline or --double-batch"
    fi
    # here, as the arguments are read (a default set later is right by construction): train-glue.sh and
    # train-cnndm.sh fetch a pre-trained model before variant_args
    [[ -z ${ALPHA:-} ]] || need_number --alpha/ALPHA "$ALPHA"
    return 0
}

# The batch size of the variant: --double-batch doubles --max-tokens (paper App. C.1).
variant_max_tokens() {
    [[ $1 =~ ^[1-9][0-9]*$ ]] || die "MAX_TOKENS must be a positive integer, not '$1'"
    if [[ $VARIANT == baseline-2x ]]; then echo $(($1 * 2)); else echo "$1"; fi
}

# pretrained_model_path MODEL: where `python -m rdrop_fairseq.recipes.datasets.pretrained MODEL --out
# MODELS_DIR` puts model.pt (its --path-only; tests/recipes/test_glue_scripts.py checks they agree).
pretrained_model_path() {
    echo "${MODELS_DIR:-models}/$1/orig/${1%%.*}/model.pt"
}

# fetch_pretrained MODEL ENV: MODEL's model.pt, fetched into MODELS_DIR; a failed fetch says this
# script's ways round it (the module's own error names its flags, which the script does not take).
fetch_pretrained() {
    local models=${MODELS_DIR:-models}
    "$PYTHON" -m rdrop_fairseq.recipes.datasets.pretrained "$1" --out "$models" | tail -n 1 \
        || die "could not fetch $1 (see above): set RDROP_DATA_MIRROR to a folder holding its archive, or run" \
               "python -m rdrop_fairseq.recipes.datasets.pretrained $1 --out $models --archive FILE on a downloaded" \
               "copy, or pass its model.pt with --restore-file (or $2)"
}

# finetune_from MODEL ENV: start from --restore-file (RESTORE), else from MODEL's model.pt, fetched
# (GBs) only now, after every check that can refuse the run; --smoke trains from scratch.  A save dir
# with a checkpoint_last.pt resumes from it instead (fairseq's --finetune-from-model rule).
finetune_from() {
    if [[ -z $RESTORE && $SMOKE != 1 ]]; then
        if [[ $PRINT_ARGS == 1 ]]; then
            RESTORE=$(pretrained_model_path "$1")  # where a real run fetches it to
        else
            need_save_dir_folder
            RESTORE=$(fetch_pretrained "$1" "$2")
        fi
    fi
    [[ $PRINT_ARGS == 1 || -z $RESTORE || -f $RESTORE ]] || die "--restore-file: no such file: $RESTORE"
    [[ -z $RESTORE ]] || TRAIN_ARGS+=(--finetune-from-model "$RESTORE")
}

need_save_dir_folder() {
    [[ ! -e $SAVE_DIR || -d $SAVE_DIR ]] || die "--save-dir: $SAVE_DIR is a file, not a folder"
}

# default_save_dir SETUP: one folder per setup, variant and alpha.
default_save_dir() {
    local name=$VARIANT
    [[ $VARIANT == rdrop ]] && name=rdrop-alpha$ALPHA
    [[ $SMOKE == 1 ]] && name=smoke-$name
    echo "${CHECKPOINT_ROOT:-checkpoints}/$1/$name"
}

# variant_args RDROP_TASK RDROP_CRITERION STOCK_TASK STOCK_CRITERION
variant_args() {
    if [[ $VARIANT == rdrop ]]; then
        TRAIN_ARGS+=(--task "$1" --criterion "$2" --rdrop-alpha "$ALPHA")
    else
        TRAIN_ARGS+=(--task "$3" --criterion "$4")
    fi
}

# --smoke: a model small enough for a few CPU updates, whatever --arch says.
SMOKE_TRANSLATION_MODEL=(
    --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32
    --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
    --encoder-attention-heads 2 --decoder-attention-heads 2
    --max-valid-steps 1 --batch-size-valid 16
)

# torchrun (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT) or, opted in with
# DISTRIBUTED_PORT, SLURM (fairseq reads SLURM_* itself).  Without either, fairseq
# uses every visible GPU of this machine on its own.
distributed_args() {
    local distributed=0
    if [[ ${WORLD_SIZE:-1} -gt 1 ]]; then
        distributed=1
        TRAIN_ARGS+=(
            --distributed-world-size "$WORLD_SIZE"
            --distributed-rank "${RANK:?RANK must be set with WORLD_SIZE > 1}"
            --device-id "${LOCAL_RANK:-0}"
            --distributed-init-method "tcp://${MASTER_ADDR:?MASTER_ADDR must be set with WORLD_SIZE > 1}:${MASTER_PORT:?MASTER_PORT must be set with WORLD_SIZE > 1}"
            --distributed-no-spawn
        )
    elif [[ -n ${DISTRIBUTED_PORT:-} ]]; then
        distributed=1
        TRAIN_ARGS+=(--distributed-port "$DISTRIBUTED_PORT")
        # One task per GPU: fairseq needs the world size; one task per node: it counts GPUs.
        if [[ ${SLURM_NTASKS:-1} -gt ${SLURM_NNODES:-1} ]]; then
            TRAIN_ARGS+=(--distributed-world-size "$SLURM_NTASKS")
        fi
    fi
    if [[ $distributed == 1 && $CPU == 1 ]]; then
        TRAIN_ARGS+=(--distributed-backend gloo --ddp-backend legacy_ddp)
    fi
    return 0
}

# The number of GPUs fairseq-train will use: the last --distributed-world-size it gets
# (distributed_args sets it from torchrun's or SLURM's tasks; or after `--`), else several
# SLURM nodes with a task each, else every visible GPU, fairseq's default (none with --cpu).
visible_gpus() {
    local ids n=0 id
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        for id in "${ids[@]}"; do
            [[ -z $id || $id == -* ]] && break  # CUDA ignores the list from an invalid entry on
            n=$((n + 1))
        done
        echo "$n"
    elif command -v nvidia-smi >/dev/null; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}
world_size() {
    local args=("${TRAIN_ARGS[@]}" "${EXTRA_ARGS[@]}") n
    n=$(last_value --distributed-world-size "${args[@]}") || true
    if [[ $n =~ ^[0-9]+$ ]]; then
        echo "$((10#$n))"
    elif [[ -n ${DISTRIBUTED_PORT:-} && ${SLURM_NNODES:-1} -gt 1 ]]; then
        echo "$SLURM_NNODES"
    elif has_arg --cpu "${args[@]}"; then
        echo 1
    else
        visible_gpus
    fi
}

# Prints the command (--print-args / DRY_RUN=1) or runs it.
run_train() {
    local cmd=(fairseq-train "${TRAIN_ARGS[@]}" "${EXTRA_ARGS[@]}")
    if [[ $PRINT_ARGS == 1 ]]; then
        print_command "${cmd[@]}"
        return 0
    fi
    need_command fairseq-train
    need_save_dir_folder
    mkdir -p "$SAVE_DIR" || die "--save-dir: cannot make the folder $SAVE_DIR"
    print_command "${cmd[@]}" | sed 's/^/+ /' >&2
    exec "${cmd[@]}"
}
