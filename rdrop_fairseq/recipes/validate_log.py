"""The metrics of a ``fairseq-validate --log-format json`` log, per subset.

    python -m rdrop_fairseq.recipes.validate_log validate.log [--json metrics.json]

fairseq-validate logs one ``| <subset> | {"<subset>_loss": ..., ...}`` record per
subset; this prints ``{subset: {metric: value}}`` without the throughput entries and the predictions.
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict

from .prepare import print_json, read_lines

_RECORD = re.compile(r"\| (valid\d*|test\d*|train) \| (\{.*\})\s*$")
_THROUGHPUT = ("wps", "wpb", "bsz")


def read_metrics(path: Path) -> Dict[str, Dict[str, float]]:
    metrics = {}
    for number, line in enumerate(read_lines(path), 1):
        match = _RECORD.search(line)
        if match:
            subset = match.group(1)
            try:
                record = json.loads(match.group(2))
                metrics[subset] = {key[len(subset) + 1:]: float(value) for key, value in record.items()
                                   if key.startswith(subset + "_") and key[len(subset) + 1:] not in _THROUGHPUT
                                   and isinstance(value, (str, int, float))}  # not the logged pred/targ lists
            except ValueError as err:  # a line cut or interleaved with another's output, a value not a number
                raise ValueError(f"{path}, line {number}: a damaged '{subset}' record ({err})") from err
    if not metrics:
        raise ValueError(f"{path}: no '| <subset> | {{json}}' record; is it fairseq-validate --log-format json output?")
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.validate_log", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    args = parser.parse_args(argv)
    try:
        metrics = read_metrics(args.log)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print_json(metrics, args.json, sort_keys=True)


if __name__ == "__main__":
    main()
