#!/usr/bin/env bash
# Prepare WMT14 English-German (normalise, tokenise -a, joint BPE or sentencepiece).
#
# Usage: scripts/prepare-wmt14.sh [--out DIR] [--archive PATH]... [--mirror DIR] [--download-dir DIR]
#            [--hash NAME=ALG:HEX]... [--workers N]
#            [--bpe-merges N | --spm [--spm-vocab-size N] [--spm-sample N]]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream archives (same as --mirror)
#        PYTHON             interpreter to use (default: python, else python3)
# Writes text to DIR/wmt14.en-de/ and binaries to DIR/data-bin/wmt14.en-de/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_prepare rdrop_fairseq.recipes.datasets.wmt14 "$@"
