#!/usr/bin/env bash
# Prepare a GLUE task for RoBERTa fine-tuning as fairseq's preprocess_GLUE_tasks.sh does
# (GPT-2 BPE, fairseq-preprocess --srcdict dict.txt; STS-B scores / 5).
#
# Usage: scripts/prepare-glue.sh --task MNLI|QNLI|QQP|RTE|SST-2|MRPC|CoLA|STS-B|ALL [--out DIR]
#            [--archive PATH]... [--mirror DIR] [--download-dir DIR] [--hash NAME=ALG:HEX]... [--workers N]
# Env:   RDROP_DATA_MIRROR  local folder holding the upstream files (same as --mirror)
#        PYTHON             interpreter to use (default: python, else python3)
# --archive takes the task's zip (e.g. RTE.zip; MRPC: msr_paraphrase_{train,test}.txt and
# mrpc_dev_ids.tsv) and GPT-2's encoder.json, vocab.bpe and dict.txt, each under its upstream name.
# Writes text to DIR/glue/<TASK>/ and binaries to DIR/data-bin/glue/<TASK>/ (DIR defaults to ./data)
# and prints the data-bin folder.  A re-run skips the finished steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_prepare rdrop_fairseq.recipes.datasets.glue "$@"
