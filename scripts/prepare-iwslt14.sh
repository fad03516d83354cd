#!/usr/bin/env bash
# Prepare IWSLT14 German-English (fairseq's recipe: Moses tokenisation, lowercase, joint BPE).
#
# Usage: scripts/prepare-iwslt14.sh [--out DIR] [--archive PATH]... [--mirror DIR] [--download-dir DIR]
#            [--hash NAME=ALG:HEX]... [--workers N] [--bpe-merges N] [--drop-meta-lines]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream archives (same as --mirror)
#        PYTHON             interpreter to use (default: python, else python3)
# Writes text to DIR/iwslt14.de-en/ and binaries to DIR/data-bin/iwslt14.de-en/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_prepare rdrop_fairseq.recipes.datasets.iwslt14 "$@"
