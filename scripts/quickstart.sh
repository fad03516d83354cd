#!/usr/bin/env bash
# See R-Drop work on one machine in minutes: a baseline and an R-Drop transformer, German->English.
#
# Usage: scripts/quickstart.sh [--minutes M] [--rdrop-alpha A] [--corpus DIR --src de --tgt en] [--work-dir DIR]
#            [--train-pairs N] [--out-dir DIR] [--smoke] [--eval-bleu] [--cpu] [--seed N] [--workers N]
# Env:   PYTHON  interpreter with rdrop_fairseq's dependencies (default: python)
# Without --corpus it builds a German-English corpus from LibreOffice's help packages (apt-get download,
# no root), cached in --work-dir (default ~/.cache/rdrop_fairseq).  Prints a table (test BLEU, valid
# loss/ppl, updates, wall time, words/s) and writes OUT_DIR/{results.md,results.json,curves.png}
# (OUT_DIR defaults to ./rdrop-quickstart).  All options: scripts/quickstart.sh --help
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

case "${1:-}" in
    -h|--help) usage; echo; ;;
esac

# Run from a checkout without installing the package.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: interpreter not found: PYTHON=$PYTHON" >&2
    usage >&2
    exit 2
fi
exec "$PYTHON" -m rdrop_fairseq.quickstart "$@"
