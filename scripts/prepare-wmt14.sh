#!/usr/bin/env bash
# Prepare WMT14 English-German (normalise, tokenise -a, joint BPE or sentencepiece).
#
# Usage: scripts/prepare-wmt14.sh [--out DIR] [--archive PATH]... [--mirror DIR] [--download-dir DIR]
#            [--hash NAME=ALG:HEX]... [--workers N]
#            [--bpe-merges N | --spm [--spm-vocab-size N] [--spm-sample N]]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream archives (same as --mirror)
#        PYTHON             interpreter to use (default: python)
# Writes text to DIR/wmt14.en-de/ and binaries to DIR/data-bin/wmt14.en-de/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac

# Run from a checkout without installing the package.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m rdrop_fairseq.datasets.wmt14 "$@"
