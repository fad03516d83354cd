#!/usr/bin/env bash
# Prepare WikiText-103 for language modelling (fairseq-preprocess --only-source).
#
# Usage: scripts/prepare-wikitext103.sh [--out DIR] [--archive PATH]... [--mirror DIR] [--download-dir DIR]
#            [--hash NAME=ALG:HEX]... [--workers N]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream archives (same as --mirror)
#        PYTHON             interpreter to use (default: python, else python3)
# Writes text to DIR/wikitext-103/ and binaries to DIR/data-bin/wikitext-103/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_prepare rdrop_fairseq.recipes.datasets.wikitext103 "$@"
