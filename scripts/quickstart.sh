#!/usr/bin/env bash
# See R-Drop work on one machine: a baseline and an R-Drop transformer, German->English, the same number
# of updates each.
#
# Usage: scripts/quickstart.sh [--max-updates N | --minutes M] [--rdrop-alpha A] [--corpus DIR --src de --tgt en]
#            [--work-dir DIR] [--train-pairs N] [--out-dir DIR] [--smoke] [--eval-bleu] [--cpu] [--seed N]
# Env:   PYTHON  interpreter to run it with (default: python, else python3).  When it lacks rdrop_fairseq's
#                dependencies, they are installed once into a virtual environment in the checkout (.venv),
#                which later runs reuse.
#        RDROP_QUICKSTART_TORCH  what that installation asks pip for torch (default torch==2.13.0)
# On a CPU: a 2+2-layer transformer on 2,000 pairs, 2,200 updates per run.  With CUDA: the paper's
# transformer_iwslt_de_en (alpha 5, fp16) on the whole corpus, 4,000 updates per run.
# Without --corpus it builds a German-English corpus from LibreOffice's help packages (apt-get download,
# no root), cached in --work-dir (default ~/.cache/rdrop_fairseq).  Prints a table (test BLEU, length
# penalty chosen on valid, brevity penalty, valid loss/ppl, updates, wall time, words/s) and writes
# OUT_DIR/{results.md,results.json,curves.png} (OUT_DIR defaults to ./rdrop-quickstart).
# All options: scripts/quickstart.sh --help
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
# Modules of setup.py's install_requires that the quickstart imports; finding them is enough (no import:
# torch and fairseq take seconds to load).
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

# install_into_venv PY: make $VENV with PY and install torch and this checkout (as .ci/run does).
install_into_venv() {
    local torch_spec
    read -ra torch_spec <<<"${RDROP_QUICKSTART_TORCH:-torch==2.13.0}"
    echo "quickstart: $1 lacks rdrop_fairseq's dependencies (${NEEDED_MODULES[*]});"
    echo "quickstart: installing them into the virtual environment $VENV (once; later runs reuse it)"
    "$1" -m venv "$VENV" || die "cannot make a virtual environment with $1 -m venv (Debian/Ubuntu: \
apt-get install python3-venv), or install the dependencies yourself: pip install -e $REPO"
    venv_pip install -q --upgrade pip setuptools wheel
    # torch first, so that what pip picks for it (see RDROP_QUICKSTART_TORCH) is not overridden below
    venv_pip install -q "${torch_spec[@]}"
    venv_pip install -q -e "$REPO"
    has_dependencies "$VENV/bin/python" || die "the installation into $VENV left some of ${NEEDED_MODULES[*]} \
missing; see pip's messages above"
    echo "quickstart: installed; running with $VENV/bin/python"
}

default_python() {
    if [[ -z ${PYTHON:-} ]]; then
        PYTHON=python
        command -v python >/dev/null 2>&1 || PYTHON=python3
    fi
}

# choose_python: set PYTHON to an interpreter that has the dependencies, installing them if none has.
choose_python() {
    default_python
    command -v "$PYTHON" >/dev/null 2>&1 || die "interpreter not found: PYTHON=$PYTHON"
    if has_dependencies "$PYTHON"; then
        return
    fi
    if [[ -x $VENV/bin/python ]] && has_dependencies "$VENV/bin/python"; then
        echo "quickstart: $PYTHON lacks rdrop_fairseq's dependencies; using $VENV/bin/python"
    else
        install_into_venv "$PYTHON"
    fi
    PYTHON="$VENV/bin/python"
}

case "${1:-}" in
    -h|--help)
        usage
        echo
        default_python
        for candidate in "$PYTHON" "$VENV/bin/python"; do
            if has_dependencies "$candidate"; then
                exec "$candidate" -m rdrop_fairseq.recipes.quickstart --help
            fi
        done
        echo "(the full list of options needs the dependencies: run the quickstart once to install them)"
        exit 0
        ;;
esac

choose_python
exec "$PYTHON" -m rdrop_fairseq.recipes.quickstart "$@"
