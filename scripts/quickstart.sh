#!/usr/bin/env bash
# See R-Drop work on one machine: a baseline and an R-Drop transformer, German->English, the same number
# of updates each.
#
# Usage: scripts/quickstart.sh [--max-updates N | --minutes M] [--rdrop-alpha A] [--corpus DIR --src de --tgt en]
#            [--work-dir DIR] [--train-pairs N] [--out-dir DIR] [--smoke] [--eval-bleu] [--cpu] [--seed N]
#            [--concurrent] [--workers N]
# Env:   PYTHON  interpreter to run it with (default: the first of python and python3 that has rdrop_fairseq's
#                dependencies).  When it lacks them (unset: when both do), they are installed once into a
#                virtual environment in the checkout (.venv, made with $PYTHON where it is set, else with
#                python3 where it is there), which later runs reuse once that installation has finished; an
#                unfinished one is installed into again.
#        RDROP_QUICKSTART_TORCH  what that installation asks pip for torch (default torch==2.13.0)
# On a CPU: a 2+2-layer transformer on 2,000 pairs, 2,200 updates per run.  With CUDA: the paper's
# transformer_iwslt_de_en (alpha 5, fp16) on the whole corpus, 4,000 updates per run.
# Without --corpus it builds a German-English corpus from LibreOffice's help packages (apt-get download,
# no root), cached in --work-dir (default ~/.cache/rdrop_fairseq).  Prints a table (test BLEU, length
# penalty chosen on valid, brevity penalty, valid loss/ppl, updates, wall time, words/s) and writes
# OUT_DIR/{results.md,results.json,curves.png} (OUT_DIR defaults to ./rdrop-quickstart).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
    printf 'quickstart.sh: error: %s\n' "$*" >&2
    exit 2
}

REPO="$(CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# Run from a checkout without installing the package.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
VENV="${RDROP_QUICKSTART_VENV:-$REPO/.venv}"
# written into $VENV once an installation there has finished: a later run reuses $VENV only when it is there
MARKER="$VENV/.quickstart-installed"
# Modules of setup.py's install_requires that the quickstart imports; finding them is enough to choose an
# interpreter (no import: torch and fairseq take seconds to load); an installation imports them once.
NEEDED_MODULES=(torch fairseq numpy sacrebleu sacremoses subword_nmt pooch matplotlib)

# has_dependencies PY: whether interpreter PY finds every module the quickstart needs.
has_dependencies() {
    "$1" -c 'import importlib.util, sys
sys.exit(any(importlib.util.find_spec(name) is None for name in sys.argv[1:]))' "${NEEDED_MODULES[@]}" 2>/dev/null
}

# venv_pip ARGS...: pip of the checkout's virtual environment; RDROP_QUICKSTART_PIP replaces it (the tests
# point it at a fake one, to skip the download but not the decision).
venv_pip() {
    if [[ -n ${RDROP_QUICKSTART_PIP:-} ]]; then
        "$RDROP_QUICKSTART_PIP" "$@"
    else
        "$VENV/bin/python" -m pip "$@"
    fi
}

# install_into_venv PY LACKING: make $VENV with PY (or repair it) and install torch and this checkout (as .ci/run does);
# $MARKER is written only once all of it, and an import of every needed module, succeeded.
install_into_venv() {
    local torch_spec output
    read -ra torch_spec <<<"${RDROP_QUICKSTART_TORCH:-torch==2.13.0}"
    echo "quickstart: $2 rdrop_fairseq's dependencies (${NEEDED_MODULES[*]});"
    if [[ -f $MARKER ]]; then
        echo "quickstart: the virtual environment $VENV has lost some of them; installing them into it again"
    elif [[ -e $VENV ]]; then
        echo "quickstart: the virtual environment $VENV has no record of a finished installation ($MARKER): an"
        echo "quickstart: earlier one was interrupted, or something else made it; installing into it again"
    else
        echo "quickstart: installing them into the virtual environment $VENV (once; later runs reuse it)"
    fi
    rm -f "$MARKER"
    "$1" -m venv "$VENV" || die "cannot make a virtual environment with $1 -m venv (Debian/Ubuntu: \
apt-get install python3-venv), or install the dependencies yourself: pip install -e $REPO"
    venv_pip install -q --upgrade pip setuptools wheel
    # torch first, so that what pip picks for it (see RDROP_QUICKSTART_TORCH) is not overridden below
    venv_pip install -q "${torch_spec[@]}"
    venv_pip install -q -e "$REPO"
    # an import, not only a look-up: a package that pip left half unpacked is found but does not import
    if ! output=$("$VENV/bin/python" -c 'import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)' "${NEEDED_MODULES[@]}" 2>&1); then
        printf '%s\n' "$output" | tail -n 20 >&2
        die "the installation into $VENV left some of ${NEEDED_MODULES[*]} missing or broken; see the \
messages above (delete $VENV to start it afresh)"
    fi
    date -u +'installed %Y-%m-%dT%H:%M:%SZ' >"$MARKER"
    echo "quickstart: installed; running with $VENV/bin/python"
}

# venv_ready: whether $VENV holds a finished installation (its marker) that still finds every module.
venv_ready() {
    [[ -x $VENV/bin/python && -f $MARKER ]] && has_dependencies "$VENV/bin/python"
}

# candidate_pythons: set CANDIDATES to $PYTHON when it is set, else to those of python and python3 on PATH.
candidate_pythons() {
    local name
    CANDIDATES=()
    if [[ -n ${PYTHON:-} ]]; then
        CANDIDATES=("$PYTHON")
        return
    fi
    for name in python python3; do
        if command -v "$name" >/dev/null 2>&1; then
            CANDIDATES+=("$name")
        fi
    done
}

# choose_python: set PYTHON to the first candidate that has the dependencies, else to $VENV's interpreter,
# installing them there unless an earlier run did.
choose_python() {
    local candidate builder lacking
    candidate_pythons
    if [[ -n ${PYTHON:-} ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "interpreter not found: PYTHON=$PYTHON"
    elif (( ${#CANDIDATES[@]} == 0 )); then
        die "neither python nor python3 is on PATH; set PYTHON to an interpreter"
    fi
    for candidate in "${CANDIDATES[@]}"; do
        if has_dependencies "$candidate"; then
            PYTHON=$candidate
            return
        fi
    done
    if (( ${#CANDIDATES[@]} == 1 )); then
        lacking="${CANDIDATES[0]} lacks"
    else
        lacking="${CANDIDATES[0]} and ${CANDIDATES[1]} lack"
    fi
    if venv_ready; then
        echo "quickstart: $lacking rdrop_fairseq's dependencies; using $VENV/bin/python"
    else
        # the environment is made with python3 where both are there: python may be Python 2
        builder=${CANDIDATES[${#CANDIDATES[@]} - 1]}
        install_into_venv "$builder" "$lacking"
    fi
    PYTHON="$VENV/bin/python"
}

# check_args ARGS...: the quickstart's argument check, or its --help, with the first interpreter that is
# Python 3.8 or later: the command line needs only the standard library, so a mistyped flag is said before
# anything is installed.  An error ends the script with its status (2), and so does the help (0).
check_args() {
    local candidate status
    candidate_pythons
    (( ${#CANDIDATES[@]} )) || return 0  # choose_python says what is missing
    for candidate in "${CANDIDATES[@]}"; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
            status=0
            "$candidate" "$REPO/rdrop_fairseq/recipes/quickstart_cli.py" "$@" || status=$?
            case $status in
                0) return ;;
                10) exit 0 ;;  # quickstart_cli.HELP_PRINTED
                *) exit "$status" ;;
            esac
        fi
    done
}

export RDROP_QUICKSTART_PROG="$0"
case "${1:-}" in
    -h|--help)
        usage
        echo
        check_args --help
        exit 0
        ;;
esac

check_args "$@"
choose_python
exec "$PYTHON" -m rdrop_fairseq.recipes.quickstart "$@"
