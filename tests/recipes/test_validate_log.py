"""rdrop_fairseq.recipes.validate_log on logs written by fairseq's own JSON progress bar."""
import json
import logging
from collections import OrderedDict

import pytest
import torch

from rdrop_fairseq.recipes import validate_log

# fairseq_cli.validate's logging.basicConfig
FAIRSEQ_LOG_FORMAT = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S")


def fairseq_log(path, records, epoch=None):
    """A log as ``fairseq-validate --log-format json --log-interval 1`` writes it: its configuration,
    then per subset the bar's per-batch lines and its tagged end-of-subset record.  ``epoch`` makes
    the records carry an ``epoch`` entry, as fairseq-train's validation records do."""
    from fairseq.logging import progress_bar

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(FAIRSEQ_LOG_FORMAT)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        logging.getLogger("fairseq_cli.validate").info(str({"common": {"log_format": "json"}, "task": {}}))
        for subset, stats in records:
            bar = progress_bar.JsonProgressBar([0], epoch=epoch, log_interval=1)
            for step, _ in enumerate(bar, 1):
                bar.log({"loss": 1.5, "sample_size": 8}, step=step)
            bar.print(OrderedDict(stats), tag=subset)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    return path


def test_metrics_per_subset_without_throughput_and_predictions(tmp_path, run_main):
    valid = {"loss": 0.3125, "accuracy": 90.5, "mcc": 0.75, "wps": 1234.5, "wpb": 512.0, "bsz": 32.0,
             "pred": torch.tensor([1, 0]), "targ": torch.tensor([1, 1])}
    valid1 = {"loss": 0.25, "accuracy": 90.1, "wps": 99.0, "wpb": 7.0, "bsz": 2.0}
    log = fairseq_log(tmp_path / "validate.log", [("valid", valid), ("valid1", valid1)])
    kept = {"valid": {"loss": 0.3125, "accuracy": 90.5, "mcc": 0.75}, "valid1": {"loss": 0.25, "accuracy": 90.1}}
    assert validate_log.read_metrics(log) == kept
    status, out, err = run_main(validate_log.main, log, "--json", tmp_path / "metrics.json")
    assert (status, err) == (0, "")
    assert json.loads(out) == kept and (tmp_path / "metrics.json").read_text() == out
    assert list(json.loads(out)["valid"]) == sorted(kept["valid"])  # stable across fairseq's logging order


def test_the_epoch_of_a_training_log_record_is_no_metric(tmp_path):
    log = fairseq_log(tmp_path / "train.log", [("valid", {"loss": 2.5, "ppl": 5.66})], epoch=3)
    assert '"epoch": 3' in log.read_text()
    assert validate_log.read_metrics(log) == {"valid": {"loss": 2.5, "ppl": 5.66}}


def test_a_diverged_metric_is_written_as_strict_json_null(tmp_path, run_main):
    log = fairseq_log(tmp_path / "validate.log", [("valid", {"loss": float("nan"), "accuracy": 50.0}),
                                                  ("valid1", {"loss": float("inf"), "accuracy": 49.0})])
    status, out, err = run_main(validate_log.main, log, "--json", tmp_path / "metrics.json")
    assert (status, err) == (0, "")

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    expected = {"valid": {"accuracy": 50.0, "loss": None}, "valid1": {"accuracy": 49.0, "loss": None}}
    assert json.loads(out, parse_constant=refuse) == expected
    assert (tmp_path / "metrics.json").read_text() == out


def test_a_log_without_records_is_named_and_no_json_is_written(tmp_path, run_main):
    log = tmp_path / "validate.log"
    log.write_text("2024-01-01 00:00:00 | INFO | fairseq_cli.validate | loaded checkpoint\n")
    status, out, err = run_main(validate_log.main, log, "--json", tmp_path / "metrics.json")
    assert status == 1 and out == ""
    assert f"error: {log}: no '| <subset> | {{json}}' record" in err and "--log-format json" in err
    assert not (tmp_path / "metrics.json").exists()


def test_a_missing_log_is_one_line_naming_it(tmp_path, run_main):
    status, out, err = run_main(validate_log.main, tmp_path / "absent.log")
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and str(tmp_path / "absent.log") in err


@pytest.mark.parametrize("record", ['{"valid_loss": "0.3",, "valid_accuracy": "90"}',
                                    '{"valid_loss": "0.3", "valid_accuracy": "n/a"}'])
def test_a_damaged_record_is_named_by_file_and_line(tmp_path, run_main, record):
    log = fairseq_log(tmp_path / "validate.log", [("valid1", {"loss": 0.25})])
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"2024-01-01 00:00:00 | INFO | valid | {record}\n")
    number = len(log.read_text().splitlines())
    status, out, err = run_main(validate_log.main, log, "--json", tmp_path / "metrics.json")
    assert status == 1 and out == "" and not (tmp_path / "metrics.json").exists()
    assert len(err.splitlines()) == 1 and f"{log}, line {number}: " in err
