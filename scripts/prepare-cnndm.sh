#!/usr/bin/env bash
# Prepare CNN/DailyMail for BART fine-tuning in fairseq's README.summarization.md format
# ({train,val,test}.{source,target}, GPT-2 BPE, fairseq-preprocess with GPT-2's dict.txt).
#
# Usage: scripts/prepare-cnndm.sh [--out DIR] [--archive PATH]... [--mirror DIR] [--download-dir DIR]
#            [--hash NAME=ALG:HEX]... [--workers N]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream files (same as --mirror)
#        PYTHON             interpreter to use (default: python, else python3)
# --archive takes cnn_stories.tgz, dailymail_stories.tgz, all_{train,val,test}.txt and GPT-2's
# encoder.json, vocab.bpe and dict.txt, each under its upstream name.
# Writes text to DIR/cnn_dm/ and binaries to DIR/data-bin/cnn_dm/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_prepare rdrop_fairseq.recipes.datasets.cnn_dm "$@"
