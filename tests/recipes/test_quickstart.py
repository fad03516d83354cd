import _thread
import gc
import json
import re
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.image
import pytest

from conftest import corpus
from rdrop_fairseq import cli
from rdrop_fairseq.recipes import lohelp, quickstart

REPO = Path(__file__).resolve().parents[2]
SHARED_CORPUS = REPO.parent / "shared" / "corpora" / "lohelp-de-en"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse(*argv):
    return quickstart.build_parser().parse_args(list(argv))


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


ROW = {"bleu": 12.345, "bleu_ci95": 0.7, "bleu_p": None, "lenpen": 1.4, "bp": 0.876, "best_valid_loss": 4.5,
       "valid_ppl": 22.6, "updates": 300, "wall_s": 90.0, "words_per_s": 1234.4}


def test_table_has_one_row_per_run_with_every_column():
    table = quickstart.format_table({"baseline": ROW, "rdrop": dict(ROW, bleu=13.0, bleu_p=0.0123)}).splitlines()
    assert table[0] == quickstart.TABLE_HEADER and table[0].count("|") == 11 and "words/s" in table[0]
    assert table[2] == "| baseline | 12.35 ± 0.70 | – | 1.4 | 0.88 | 4.500 | 22.60 | 300 | 1.5 min | 1234 |"
    assert table[3].startswith("| rdrop | 13.00 ± 0.70 | 0.012 |")


def test_bleu_comes_with_its_confidence_interval_a_paired_p_value_and_the_brevity_penalty():
    import sacrebleu

    refs = [f"the cat number {i} sat on the mat near door {i % 7}" for i in range(60)]
    worse = [ref if i % 3 else "a dog" for i, ref in enumerate(refs)]
    better = [ref if i % 9 else "a dog" for i, ref in enumerate(refs)]
    scores = quickstart.bleu_with_significance({"baseline": worse, "rdrop": better}, refs)
    assert scores["baseline"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(worse, [refs]).score)
    assert scores["baseline"]["bp"] == pytest.approx(sacrebleu.corpus_bleu(worse, [refs]).bp)
    assert scores["baseline"]["bp"] < scores["rdrop"]["bp"] <= 1
    assert scores["baseline"]["bleu_p"] is None
    # the half-width of each system's own 95% bootstrap interval (sacreBLEU's seeded resampling, 1,000 samples)
    for name, system in (("baseline", worse), ("rdrop", better)):
        alone = sacrebleu.metrics.BLEU().corpus_score(system, [refs], n_bootstrap=1000).format(width=9)
        half_width = float(re.search(r"± ([0-9.]+)\)", alone).group(1))
        assert half_width > 0 and scores[name]["bleu_ci95"] == pytest.approx(half_width, abs=1e-8), alone
    assert scores["rdrop"]["bleu"] > scores["baseline"]["bleu"] and scores["rdrop"]["bleu_p"] < 0.01


def test_two_equal_bleus_are_not_called_a_significant_difference():
    refs = [f"the cat number {i} sat on the mat" for i in range(30)]
    nothing = ["a dog"] * len(refs)  # BLEU 0 in every resample: sacreBLEU's own p would be 1/1001
    scores = quickstart.bleu_with_significance({"baseline": nothing, "rdrop": list(nothing)}, refs)
    assert scores["baseline"]["bleu"] == scores["rdrop"]["bleu"] == 0.0
    assert scores["rdrop"]["bleu_p"] == 1.0


CPU = quickstart.Device(cuda=False)
H200 = quickstart.Device(cuda=True, name="NVIDIA H200")


def test_by_default_both_runs_train_a_fixed_number_of_updates_with_no_time_limit(tmp_path):
    plan = quickstart.plan_run(CPU, parse())
    assert plan.setup == quickstart.CPU and plan.max_update == quickstart.CPU.updates == 2200
    assert plan.alpha == 2.0 and plan.device_flags == ("--cpu",) and plan.minutes is None
    cmd = quickstart.train_command(tmp_path, tmp_path / "run", plan, plan.alpha, parse(), plan.max_update, 0.0)
    assert flag(cmd, "--max-update") == "2200" and "--stop-time-hours" not in cmd
    assert quickstart.plan_run(CPU, parse("--smoke")).max_update == quickstart.SMOKE.updates


def test_max_updates_and_minutes_override_the_default():
    assert quickstart.plan_run(CPU, parse("--max-updates", "500")).max_update == 500
    assert quickstart.plan_run(H200, parse("--max-updates", "1500")).max_update == 1500
    budget = quickstart.plan_run(CPU, parse("--minutes", "20"))
    assert budget.max_update == 0 and budget.minutes == 20  # R-Drop's budget decides
    both = quickstart.plan_run(CPU, parse("--minutes", "20", "--max-updates", "900"))
    assert both.max_update == 900 and both.minutes == 20
    assert quickstart.plan_run(CPU, parse("--smoke", "--minutes", "20")).max_update == quickstart.SMOKE.updates


def test_with_cuda_the_paper_model_trains_on_the_whole_corpus_in_fp16(tmp_path):
    args = parse()
    plan = quickstart.plan_run(H200, args)
    assert plan.setup == quickstart.GPU and plan.device == H200
    assert plan.setup.train_pairs == 0 and plan.setup.heldout_pairs == 0  # the whole corpus
    assert plan.alpha == 5.0 and plan.max_update == quickstart.GPU.updates
    cmd = quickstart.train_command(tmp_path, tmp_path / "run", plan, plan.alpha, args, plan.max_update, 0.0)
    for name, value in (("--arch", "transformer_iwslt_de_en"), ("--dropout", "0.3"), ("--rdrop-alpha", "5.0"),
                        ("--max-tokens", "4096"), ("--encoder-layers", "6"), ("--encoder-embed-dim", "512"),
                        ("--encoder-ffn-embed-dim", "1024"), ("--encoder-attention-heads", "4")):
        assert flag(cmd, name) == value, name
    assert "--fp16" in cmd and "--bf16" not in cmd and "--cpu" not in cmd


def test_the_gpu_command_is_one_fairseq_train_accepts_and_bf16_would_not_run_on_cuda(tmp_path):
    from fairseq import options

    plan = quickstart.plan_run(H200, parse())
    cmd = quickstart.train_command(tmp_path, tmp_path / "run", plan, plan.alpha, parse(), plan.max_update, 0.0)
    assert cmd[1:3] == ["-m", "fairseq_cli.train"]

    def fairseq_args(argv):
        return options.parse_args_and_arch(options.get_training_parser(), input_args=argv)

    parsed = fairseq_args(cmd[3:])
    assert (parsed.arch, parsed.task, parsed.criterion) == (
        "transformer_iwslt_de_en", "rdrop_translation", "rdrop_label_smoothed_cross_entropy")
    assert parsed.fp16 and not parsed.tpu and not parsed.cpu and parsed.max_tokens == 4096
    assert parsed.dropout == 0.3 and parsed.rdrop_alpha == 5.0 and parsed.max_update == 4000
    # why not bf16: fairseq 0.12 takes --bf16 for a TPU, and its trainer then leaves CUDA unused
    bf16 = fairseq_args([arg for arg in cmd[3:] if arg != "--fp16"] + ["--bf16"])
    assert bf16.tpu


def test_cpu_forces_the_cpu_setup_even_with_cuda():
    forced = quickstart.plan_run(H200, parse("--cpu"))
    assert forced.setup == quickstart.CPU and forced.device_flags == ("--cpu",) and not forced.device.cuda
    assert quickstart.plan_run(H200, parse("--rdrop-alpha", "1")).alpha == 1.0
    assert quickstart.plan_run(H200, parse("--train-pairs", "5000")).setup.train_pairs == 5000


def test_the_device_comes_from_torch(monkeypatch):
    import torch

    assert quickstart.detect_device(force_cpu=True) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert quickstart.detect_device(force_cpu=False) == H200
    assert quickstart.detect_device(force_cpu=True) == CPU


def test_both_runs_share_every_setting_but_alpha(tmp_path):
    args = parse("--cpu")
    plan = quickstart.plan_run(H200, args)
    cmds = {alpha: quickstart.train_command(tmp_path, tmp_path / "run", plan, alpha, args, 100, 0.1)
            for alpha in (0.0, 5.0)}
    differing = [(a, b) for a, b in zip(cmds[0.0], cmds[5.0]) if a != b]
    assert differing == [("0.0", "5.0")]
    cmd = cmds[5.0]
    for name, value in (("--criterion", "rdrop_label_smoothed_cross_entropy"), ("--task", "rdrop_translation"),
                        ("--log-format", "json"), ("--max-update", "100")):
        assert flag(cmd, name) == value
    assert "--log-file" in cmd and "--stop-time-hours" in cmd and "--cpu" in cmd


def test_rdrop_run_takes_the_alpha_flag_and_the_baseline_zero(tmp_path, monkeypatch):
    alphas = []

    def fake_run(cmd, log, echo=None):
        alphas.append(flag(cmd, "--rdrop-alpha"))
        return []

    monkeypatch.setattr(quickstart, "run_logged", fake_run)
    args = parse("--rdrop-alpha", "0.5", "--smoke")
    walls = quickstart.train_runs(tmp_path, tmp_path / "out", quickstart.plan_run(CPU, args), args)
    assert alphas == ["0.5", "0.0"] and set(walls) == {"rdrop", "baseline"}


def test_a_rerun_reuses_a_finished_run_with_the_same_settings_and_retrains_any_other(tmp_path, monkeypatch):
    trained = []

    def fake_run(cmd, log, echo=None):
        name = log.parent.name
        if name == "baseline" and fail_baseline:
            raise RuntimeError("command failed (exit 1)")
        trained.append((name, flag(cmd, "--rdrop-alpha")))
        (log.parent / "train.log").write_text(f"{name} {flag(cmd, '--rdrop-alpha')}\n")
        Path(flag(cmd, "--save-dir")).mkdir()
        (Path(flag(cmd, "--save-dir")) / "checkpoint_best.pt").write_bytes(b"")
        return []

    monkeypatch.setattr(quickstart, "run_logged", fake_run)
    out = tmp_path / "out"

    def train(*argv):
        trained.clear()
        args = parse("--smoke", *argv)
        return quickstart.train_runs(tmp_path, out, quickstart.plan_run(CPU, args), args)

    fail_baseline = True  # interrupted in the baseline: R-Drop finished, the baseline did not
    with pytest.raises(RuntimeError):
        train()
    assert trained == [("rdrop", "2.0")] and (out / "rdrop" / quickstart.FINISHED).is_file()
    assert not (out / "baseline" / quickstart.FINISHED).exists()

    fail_baseline = False
    walls = train()
    assert trained == [("baseline", "0.0")] and (out / "rdrop" / "train.log").read_text() == "rdrop 2.0\n"
    assert set(walls) == {"rdrop", "baseline"} and all(wall >= 0 for wall in walls.values())
    assert train() == walls and trained == []  # both finished: nothing trains, the recorded times stay

    walls = train("--rdrop-alpha", "3")  # another alpha: R-Drop trains again, the baseline is the same run
    assert trained == [("rdrop", "3.0")] and (out / "rdrop" / "train.log").read_text() == "rdrop 3.0\n"
    train("--seed", "2")  # a setting both runs share: both train again
    assert trained == [("rdrop", "2.0"), ("baseline", "0.0")]

    (out / "rdrop" / quickstart.FINISHED).write_text("{not json")  # a damaged record is no record
    train("--seed", "2")
    assert trained == [("rdrop", "2.0")]
    (out / "baseline" / "checkpoints" / "checkpoint_best.pt").unlink()  # nothing to translate with
    train("--seed", "2")
    assert trained == [("baseline", "0.0")]
    (tmp_path / "dict.en.txt").write_text("hello 1\n")  # the data rebuilt in the same folder
    train("--seed", "2")
    assert trained == [("rdrop", "2.0"), ("baseline", "0.0")]
    assert train("--seed", "2") and trained == []
    monkeypatch.setattr(quickstart, "package_version", lambda *names: "9.9")  # another torch or fairseq
    train("--seed", "2")
    assert trained == [("rdrop", "2.0"), ("baseline", "0.0")]


def test_under_minutes_rdrop_sets_the_update_count_of_the_baseline(tmp_path, monkeypatch):
    limits = []

    def fake_run(cmd, log, echo=None):
        limits.append((cmd[cmd.index("--max-update") + 1] if "--max-update" in cmd else None,
                       float(flag(cmd, "--stop-time-hours"))))
        progress.append(echo(PROGRESS_LINE))
        (log.parent / "train.log").write_text('{"epoch": 1, "loss": "5.0", "num_updates": "625", "wall": "60"}\n')
        return []

    monkeypatch.setattr(quickstart, "run_logged", fake_run)
    args = parse("--minutes", "20")
    progress = []
    quickstart.train_runs(tmp_path, tmp_path / "out", quickstart.plan_run(CPU, args), args)
    (rdrop_limit, rdrop_hours), (baseline_limit, baseline_hours) = limits
    assert rdrop_limit is None and rdrop_hours == pytest.approx(20 / 60 * 0.9 * 0.6, abs=1e-4)
    assert baseline_limit == "625" and baseline_hours > 20 / 60 * 0.9 * 0.4
    # R-Drop's time left is its budget's; the baseline's, from R-Drop's update count
    assert progress == ["[rdrop] 3 updates, 0.1 min so far, at most 10.7 min left of its time budget\n",
                        "[baseline] 3/625 updates, 0.1 min so far, about 20.7 min left\n"]

    limits.clear()  # with both flags, the budget stopped R-Drop first: the baseline gets R-Drop's 625 still
    args = parse("--minutes", "20", "--max-updates", "2000")
    quickstart.train_runs(tmp_path, tmp_path / "out2", quickstart.plan_run(CPU, args), args)
    assert [limit for limit, _ in limits] == ["2000", "625"]


def test_a_tiny_time_budget_is_not_rounded_to_fairseq_s_no_limit(tmp_path):
    """fairseq's --stop-time-hours 0 means no limit: with no --max-update either, R-Drop would never stop."""
    args = parse("--minutes", "0.0005")
    plan = quickstart.plan_run(CPU, args)
    cmd = quickstart.train_command(tmp_path, tmp_path / "run", plan, plan.alpha, args, plan.max_update,
                                   0.6 * 0.9 * 0.0005 / 60)
    assert "--max-update" not in cmd and float(flag(cmd, "--stop-time-hours")) > 0


PROGRESS_LINE = ('2026-12-04 17:30:00 | INFO | train_inner | {"epoch": 1, "loss": "5.0", "num_updates": "3", '
                 '"wall": "6"}\n')


def test_with_concurrent_both_runs_train_at_once_and_a_failed_one_trains_again_alone(tmp_path, monkeypatch):
    out, batches, failing = tmp_path / "out", [], {"baseline"}

    def fake_together(jobs, on_success):
        batches.append({name: flag(cmd, "--rdrop-alpha") for name, (cmd, _, _) in jobs.items()})
        outcomes = {}
        for name, (cmd, log, echo) in jobs.items():
            assert log == out / name / "stdout.log" and log.parent.is_dir()
            assert echo(PROGRESS_LINE).startswith(f"[{name}] 3/6 updates")
            if name in failing:
                outcomes[name] = quickstart.Outcome([], RuntimeError("command failed (exit 1)"), 1.0)
                continue
            Path(flag(cmd, "--save-dir")).mkdir()
            (Path(flag(cmd, "--save-dir")) / "checkpoint_best.pt").write_bytes(b"")
            on_success(name, 42.0)
            outcomes[name] = quickstart.Outcome([], None, 42.0)
        return outcomes

    monkeypatch.setattr(quickstart, "run_logged_together", fake_together)
    monkeypatch.setattr(quickstart, "run_logged", lambda *args: pytest.fail("a run trained on its own"))

    def train():
        args = parse("--smoke", "--concurrent")
        return quickstart.train_runs(tmp_path, out, quickstart.plan_run(CPU, args), args)

    with pytest.raises(RuntimeError, match="^baseline: command failed"):
        train()
    assert batches == [{"rdrop": "2.0", "baseline": "0.0"}]  # one batch: both at once
    assert quickstart.shared_device(out / "rdrop") and not (out / "baseline" / quickstart.FINISHED).exists()
    failing.clear()
    batches.clear()
    walls = train()
    assert batches == [{"baseline": "0.0"}] and walls == {"rdrop": 42.0, "baseline": 42.0}
    assert not quickstart.shared_device(out / "baseline")  # it trained alone this time
    batches.clear()
    assert train() == walls and batches == []


def test_a_run_that_finished_beside_an_interrupted_one_is_recorded_and_reused(tmp_path, monkeypatch):
    """The baseline ends first; a stop (the device's time limit, Ctrl-C) during R-Drop must not lose it."""
    out = tmp_path / "out"

    def baseline_ends_then_interrupted(jobs, on_success):
        cmd = jobs["baseline"][0]
        Path(flag(cmd, "--save-dir")).mkdir()
        (Path(flag(cmd, "--save-dir")) / "checkpoint_best.pt").write_bytes(b"")
        on_success("baseline", 7.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "run_logged_together", baseline_ends_then_interrupted)
    args = parse("--smoke", "--concurrent")
    with pytest.raises(KeyboardInterrupt):
        quickstart.train_runs(tmp_path, out, quickstart.plan_run(CPU, args), args)
    assert quickstart.shared_device(out / "baseline") and not (out / "rdrop" / quickstart.FINISHED).exists()
    cmd = quickstart.train_command(tmp_path, out / "baseline", quickstart.plan_run(CPU, args), 0.0, args,
                                   quickstart.SMOKE.updates, 0.0)
    assert quickstart.finished_wall(out / "baseline", cmd, quickstart.run_inputs(tmp_path)) == 7.0


def test_a_run_that_goes_on_alone_after_training_beside_the_other_is_said_to_have_shared(tmp_path):
    import zipfile

    run_dir, cmd, inputs = tmp_path / "rdrop", ["python", "-m", "fairseq_cli.train", "--max-update", "6"], {"data": "x"}
    quickstart.begin_run("rdrop", run_dir, cmd, inputs)
    quickstart.note_shared(run_dir)  # its first attempt trained beside the baseline, then was cut off
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "checkpoint_1_3.pt").write_bytes(b"")
    with zipfile.ZipFile(run_dir / "checkpoints" / "checkpoint_best.pt", "w") as best:
        best.writestr("archive/data.pkl", b"")
    (run_dir / "stdout.log").write_text("")
    _, run_cmd = quickstart.begin_run("rdrop", run_dir, cmd, inputs)
    assert run_cmd[-2:] == ["--restore-file", str(run_dir / "checkpoints" / "checkpoint_1_3.pt")]
    quickstart.record_finished(run_dir, cmd, inputs, 10.0)  # the second attempt trained alone
    assert quickstart.shared_device(run_dir)


def test_a_cut_off_run_goes_on_only_with_its_own_command_and_inputs_and_a_whole_best_checkpoint(tmp_path):
    import zipfile

    run_dir, inputs = tmp_path / "rdrop", {"data": "x", "torch": "2.13.0"}
    cmd = ["python", "-m", "fairseq_cli.train", "--rdrop-alpha", "2.0", "--max-update", "6"]
    quickstart.begin_run("rdrop", run_dir, cmd, inputs)
    (run_dir / "checkpoints").mkdir()
    latest = run_dir / "checkpoints" / "checkpoint_1_3.pt"
    latest.write_bytes(b"")
    best = run_dir / "checkpoints" / "checkpoint_best.pt"
    with zipfile.ZipFile(best, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 100)
    assert quickstart.resume_point(run_dir, cmd, inputs) == latest
    assert quickstart.resume_point(run_dir, cmd, {**inputs, "torch": "2.14.0"}) is None
    assert quickstart.resume_point(run_dir, cmd[:4] + ["3.0"] + cmd[5:], inputs) is None
    (run_dir / "checkpoints" / "checkpoint_2_6.pt").write_bytes(b"")  # at its last update: nothing to go on with
    assert quickstart.resume_point(run_dir, cmd, inputs) is None
    (run_dir / "checkpoints" / "checkpoint_2_6.pt").unlink()
    whole = best.read_bytes()
    best.write_bytes(whole[:-10])  # a copy cut short
    assert quickstart.resume_point(run_dir, cmd, inputs) is None
    best.write_bytes(whole)

    # the earlier attempt trained from its start to its output's last line: 60 s, counted in the wall time
    start = time.time() - 100
    quickstart.write_started(run_dir, {**quickstart.started_record(run_dir), "starts": [start]})
    (run_dir / "stdout.log").write_text("last line\n")
    os.utime(run_dir / "stdout.log", (start + 60, start + 60))
    earlier, run_cmd = quickstart.begin_run("rdrop", run_dir, cmd, inputs)
    assert earlier == pytest.approx(60) and run_cmd == cmd + ["--restore-file", str(latest)]
    assert (run_dir / "stdout.1.log").read_text() == "last line\n"


def test_concurrent_runs_need_a_fixed_update_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        quickstart.parse_args(["--concurrent", "--minutes", "20"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--concurrent needs a fixed number of updates" in err and "--minutes" in err
    assert quickstart.plan_run(H200, parse("--concurrent")).concurrent


def test_the_table_says_which_runs_shared_the_device(tmp_path):
    def report(rdrop_shared, baseline_shared):
        results = {"baseline": dict(ROW, updates=4000, shared_device=baseline_shared),
                   "rdrop": dict(ROW, updates=4000, bleu_p=0.01, shared_device=rdrop_shared)}
        text = quickstart.write_results(tmp_path, quickstart.plan_run(H200, parse("--concurrent")), tmp_path,
                                        results)
        assert "Warning" not in text and (tmp_path / "results.md").read_text() == text + "\n"
        return text

    both = report(True, True)
    assert both.endswith("The runs trained side by side (--concurrent), sharing the device: their wall times "
                         "and words/s are not the speed of a run alone.")
    assert "\n\nR-Drop trained beside the other run (--concurrent)" in report(True, False)
    assert "\n\nThe baseline trained beside the other run" in report(False, True)
    assert "beside" not in report(False, False)  # --concurrent, but each trained alone (one was reused)


def test_a_run_with_fewer_updates_than_the_default_says_it_settles_nothing(tmp_path, caplog):
    assert quickstart.shortfall_warning({"rdrop": 2200, "baseline": 2200}, quickstart.CPU) is None
    assert quickstart.shortfall_warning({"rdrop": 4000, "baseline": 4000}, quickstart.GPU) is None
    warning = quickstart.shortfall_warning({"rdrop": 625, "baseline": 625}, quickstart.CPU)
    assert warning.startswith("R-Drop made 625 updates and the baseline made 625 updates, fewer than the 2200")
    assert "does not settle the comparison" in warning and "R-Drop needs more updates than the baseline" in warning

    plan = quickstart.plan_run(CPU, parse("--minutes", "20"))
    results = {"baseline": dict(ROW, updates=625), "rdrop": dict(ROW, updates=625, bleu_p=0.001)}
    with caplog.at_level("WARNING", logger="rdrop_fairseq.recipes.quickstart"):
        report = quickstart.write_results(tmp_path, plan, tmp_path, results)
    assert warning in caplog.text and report.endswith(warning)
    assert (tmp_path / "results.md").read_text() == report + "\n"
    assert json.loads((tmp_path / "results.json").read_text())["warning"] == warning

    assert json.loads((tmp_path / "results.json").read_text())["warnings"] == [warning]

    full = {name: dict(row, updates=2200) for name, row in results.items()}
    assert "Warning" not in quickstart.write_results(tmp_path, plan, tmp_path, full)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["warning"] is None and summary["warnings"] == []


def test_one_update_short_of_the_device_s_default_is_flagged_with_max_updates_too():
    short = {name: {"updates": 2199} for name in quickstart.RUNS}
    [warning] = quickstart.update_warnings(short, quickstart.plan_run(CPU, parse("--max-updates", "2199")))
    assert warning.startswith("R-Drop made 2199 updates and the baseline made 2199 updates, fewer than the 2200")
    past_the_cpu_s = {name: {"updates": 2500} for name in quickstart.RUNS}  # short of the GPU's 4000
    [warning] = quickstart.update_warnings(past_the_cpu_s, quickstart.plan_run(H200, parse("--max-updates", "2500")))
    assert "fewer than the 4000 of the default run" in warning


@pytest.mark.parametrize("rdrop, baseline", [(2200, 900), (900, 700)])
def test_a_baseline_with_fewer_updates_than_rdrop_is_flagged_twice_short_and_unequal(tmp_path, caplog,
                                                                                    rdrop, baseline):
    """Under --minutes the baseline has a time limit of its own (a safety net): on a busy machine it can stop
    before R-Drop's update count, the default's or not."""
    plan = quickstart.plan_run(CPU, parse("--minutes", "60"))
    results = {"baseline": dict(ROW, updates=baseline), "rdrop": dict(ROW, updates=rdrop, bleu_p=0.01)}
    with caplog.at_level("WARNING", logger="rdrop_fairseq.recipes.quickstart"):
        report = quickstart.write_results(tmp_path, plan, tmp_path, results)
    assert report.count("**Warning:**") == 2
    warnings = json.loads((tmp_path / "results.json").read_text())["warnings"]
    assert len(warnings) == 2
    short, unequal = warnings
    assert f"the baseline made {baseline} updates, fewer than the 2200 of the default run" in short.lower()
    assert ("R-Drop made" in short) == (rdrop < 2200) and "does not settle the comparison" in short
    assert f"different numbers of updates (R-Drop {rdrop}, the baseline {baseline})" in unequal
    assert "unequal runs" in unequal
    for warning in warnings:
        assert f"**Warning:** {warning}" in report and warning in caplog.text
    assert json.loads((tmp_path / "results.json").read_text())["warning"] == " ".join(warnings)
    assert (tmp_path / "results.md").read_text() == report + "\n"


def test_runs_of_unequal_length_are_flagged_even_when_both_reach_the_default(tmp_path):
    plan = quickstart.plan_run(CPU, parse("--minutes", "60", "--max-updates", "3000"))
    results = {"baseline": dict(ROW, updates=2400), "rdrop": dict(ROW, updates=2600, bleu_p=0.01)}
    report = quickstart.write_results(tmp_path, plan, tmp_path, results)
    assert report.count("**Warning:**") == 1
    warnings = json.loads((tmp_path / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and "different numbers of updates (R-Drop 2600, the baseline 2400)" in warnings[0]
    assert report.endswith(f"**Warning:** {warnings[0]}")


def test_results_of_an_earlier_run_are_gone_before_training_starts(tmp_path, monkeypatch):
    """A rerun with other settings that fails (in training or in scoring) must not leave the previous
    settings' table and curves in OUT_DIR, unmarked, beside its own runs."""
    out = tmp_path / "out"
    (out / "rdrop").mkdir(parents=True)  # a run folder: train_runs decides about those
    for name in ("results.md", "results.json", "curves.png"):
        (out / name).write_text("from the previous settings\n")
    monkeypatch.setattr(quickstart, "resolve_corpus", lambda args: tmp_path / "corpus")
    monkeypatch.setattr(quickstart, "slice_corpus", lambda raw, *rest: raw)
    monkeypatch.setattr(quickstart, "prepare_data", lambda args, setup, raw: tmp_path / "bin")
    seen = []

    def failing_training(bin_dir, out_dir, plan, args):
        seen.append(sorted(path.name for path in out_dir.iterdir()))
        raise RuntimeError("command failed (exit 1); stands in for fairseq-train or fairseq-generate")

    monkeypatch.setattr(quickstart, "train_runs", failing_training)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--smoke", "--cpu", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)])
    assert exit_info.value.code == 1
    assert seen == [["rdrop"]] and sorted(path.name for path in out.iterdir()) == ["rdrop"]


def test_the_time_budget_is_whole_after_the_corpus_is_prepared(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "resolve_corpus", lambda args: tmp_path / "corpus")
    monkeypatch.setattr(quickstart, "slice_corpus", lambda raw, *rest: raw)
    monkeypatch.setattr(quickstart, "prepare_data", lambda args, setup, raw: time.sleep(0.2) or tmp_path / "bin")
    planned = []

    def stop_once_planned(bin_dir, out_dir, plan, args):
        planned.append(plan)
        raise RuntimeError("command failed (exit 1)")

    monkeypatch.setattr(quickstart, "train_runs", stop_once_planned)
    argv = ["--cpu", "--minutes", "20", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        quickstart.main(argv)
    assert planned == [quickstart.plan_run(CPU, parse(*argv))] and planned[0].minutes == 20


def test_progress_shows_updates_done_of_all_and_the_time_left():
    line = ('2026-12-04 17:30:00 | INFO | train_inner | {"epoch": 3, "update": 2.5, "loss": "6.1", '
            '"num_updates": "500", "wps": "4000", "wall": "120"}\n')
    assert quickstart.progress_echo("rdrop", 2000, 0)(line) == \
        "[rdrop] 500/2000 updates, 2.0 min so far, about 6.0 min left\n"
    assert quickstart.progress_echo("rdrop", 0, 600)(line) == \
        "[rdrop] 500 updates, 2.0 min so far, at most 8.0 min left of its time budget\n"
    # gone on from a checkpoint after 2 min of training: fairseq's clock restarted at 0, this one did not
    restarted = line.replace('"wall": "120"', '"wall": "0"')
    assert quickstart.progress_echo("rdrop", 2000, 0, earlier_s=120)(restarted) == \
        "[rdrop] 500/2000 updates, 2.0 min so far, about 6.0 min left\n"
    valid = ('2026-12-04 17:30:00 | INFO | valid | {"epoch": 3, "valid_loss": "6.5", "valid_num_updates": "500"}\n')
    assert quickstart.progress_echo("rdrop", 2000, 0)(valid) == "[rdrop] valid loss 6.500 after 500 updates\n"
    # the rest (fairseq's config, the model, warnings) goes to the run's log only
    for other in ("2026-12-04 17:30:00 | INFO | fairseq_cli.train | TransformerModel(\n", "  warnings.warn(\n"):
        assert quickstart.progress_echo("rdrop", 2000, 0)(other) is None


def test_words_per_second_weighs_each_interval_by_its_words_and_leaves_out_the_first_record():
    inner = [{"num_updates": 1.0, "wpb": 600.0, "wps": 0.0},  # fairseq's first record: no rate yet
             {"num_updates": 3.0, "wpb": 500.0, "wps": 1000.0},  # 1,000 words in 1 s
             {"num_updates": 4.0, "wpb": 3000.0, "wps": 1500.0}]  # 3,000 words in 2 s
    assert quickstart.words_per_second(inner) == pytest.approx(4000 / 3)
    assert math.isnan(quickstart.words_per_second(inner[:1]))


def test_a_failed_command_shows_the_end_of_its_output(tmp_path):
    code = "import sys; print('\\n'.join(f'line {i}' for i in range(30))); sys.exit(3)"
    with pytest.raises(RuntimeError) as raised:
        quickstart.run_logged([sys.executable, "-c", code], tmp_path / "out.log", echo=lambda line: None)
    message = str(raised.value)
    assert "exit 3" in message and "line 29" in message and "line 9\n" not in message
    assert str(tmp_path / "out.log") in message and len(read(tmp_path / "out.log")) == 30


def test_ctrl_c_says_how_to_go_on_instead_of_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "quickstart", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--cpu", "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == f"\nquickstart: interrupted; {quickstart.INTERRUPTED}\n"


def test_a_smoke_run_says_its_numbers_compare_nothing_and_gives_no_update_advice():
    smoke = quickstart.plan_run(CPU, parse("--smoke", "--max-updates", "3"))
    results = {name: {"updates": 3} for name in ("rdrop", "baseline")}
    assert quickstart.update_warnings(results, smoke) == [quickstart.SMOKE_WARNING]
    default = quickstart.plan_run(CPU, parse("--max-updates", "3"))
    assert quickstart.SMOKE_WARNING not in quickstart.update_warnings(results, default)


def test_lenpen_reranks_the_finished_hypotheses_by_length():
    short, long = ("a b", [-1.0, -1.0, -1.0]), ("a b c d e", [-1.2] * 6)
    assert quickstart.best_by_lenpen([short, long], 1.0) == "a b"     # -1.0 per token against -1.2
    assert quickstart.best_by_lenpen([short, long], 2.0) == "a b c d e"
    assert quickstart.best_by_lenpen([], 1.0) == ""


def test_lenpen_is_chosen_by_valid_bleu_from_one_grid():
    refs = [f"this is the long reference sentence number {i}" for i in range(20)]
    nbest = {i: [(f"this is the {i}", [-0.5] * 5), (ref, [-0.6] * 9)] for i, ref in enumerate(refs)}
    lenpen, bleu = quickstart.choose_lenpen(nbest, refs, lambda text: text)
    assert set(bleu) == set(quickstart.LENPENS) and lenpen > 1.0 and bleu[lenpen] == pytest.approx(100)
    assert bleu[1.0] < 100
    # when every value scores the same, no penalty
    same = {i: [(ref, [-0.5] * 9)] for i, ref in enumerate(refs)}
    assert quickstart.choose_lenpen(same, refs, lambda text: text)[0] == 1.0


def test_each_run_chooses_lenpen_on_valid_from_the_one_grid_then_translates_test_with_it(tmp_path, monkeypatch):
    """Valid and test disagree on the length penalty here: the test set must not choose it."""
    valid_refs = [f"this is the long reference sentence number {i}" for i in range(20)]
    test_refs = [f"this is the {i}" for i in range(20)]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "valid.en").write_text("".join(f"{ref}\n" for ref in valid_refs))
    (raw / "test.en").write_text("".join(f"{ref}\n" for ref in test_refs))
    # a short hypothesis, better per token, and the valid reference: a lenpen above 1 picks the long one
    candidates = {i: [(f"this is the {i}", [-0.5] * 5), (ref, [-0.6] * 9)] for i, ref in enumerate(valid_refs)}
    calls = []

    def fake_generate(bin_dir, run_dir, plan, args, subset, lenpen=1.0, nbest=1):
        calls.append((run_dir.name, subset, lenpen, nbest))
        if nbest > 1:
            return candidates
        # in another order than the ids, and without the last sentence: scored as an empty translation
        return {i: [(quickstart.best_by_lenpen(candidates[i], lenpen), [])] for i in reversed(range(19))}

    monkeypatch.setattr(quickstart, "generate", fake_generate)
    monkeypatch.setattr(quickstart, "detokenizer", lambda lang: lambda text: text)
    monkeypatch.setattr(quickstart, "summarize", lambda run_dir, wall=0.0: {"wall_s": wall})
    for name in quickstart.RUNS:
        (tmp_path / "out" / name).mkdir(parents=True)
    args = parse()
    results = quickstart.score(tmp_path, raw, tmp_path / "out", quickstart.plan_run(CPU, args), args,
                               {"baseline": 1.0, "rdrop": 2.0})
    lenpen, valid_bleu = quickstart.choose_lenpen(candidates, valid_refs, lambda text: text)
    assert lenpen > 1.0
    assert calls == [(name, subset, chosen, size) for name in ("baseline", "rdrop")
                     for subset, chosen, size in (("valid", 1.0, 5), ("test", lenpen, 1))]
    assert list(results) == ["baseline", "rdrop"]  # the paired test's reference system first
    for name, row in results.items():
        assert row["lenpen"] == lenpen and row["valid_bleu_by_lenpen"] == valid_bleu
        assert list(row["valid_bleu_by_lenpen"]) == list(quickstart.LENPENS)
        hyps = read(tmp_path / "out" / name / "test.hyp.en")
        assert hyps == [candidates[i][1][0] for i in range(19)] + [""]
    assert results["baseline"]["bleu_p"] is None and results["rdrop"]["bleu_p"] == 1.0
    assert results["rdrop"]["wall_s"] == 2.0


def test_translation_runs_on_the_device_that_trained_with_the_best_checkpoint(tmp_path, monkeypatch):
    cmds = []
    monkeypatch.setattr(quickstart, "run_logged", lambda cmd, log, echo=None: cmds.append(cmd))
    monkeypatch.setattr(quickstart, "read_nbest", lambda path: {})
    for device in (CPU, H200):
        quickstart.generate(tmp_path, tmp_path / "rdrop", quickstart.plan_run(device, parse()), parse(), "valid",
                            lenpen=1.4, nbest=5)
    on_cpu, on_gpu = cmds
    assert "--cpu" in on_cpu and "--cpu" not in on_gpu
    for name, value in (("--gen-subset", "valid"), ("--lenpen", "1.4"), ("--nbest", "5"), ("--beam", "5"),
                        ("--path", str(tmp_path / "rdrop" / "checkpoints" / "checkpoint_best.pt"))):
        assert flag(on_gpu, name) == value, name


def test_rescoring_the_nbest_gives_what_beam_search_gives_with_that_lenpen(tmp_path):
    """The claim choose_lenpen rests on, checked on fairseq's own beam search: the finished hypotheses do
    not depend on --lenpen, which only re-ranks them."""
    import torch
    from fairseq.sequence_generator import SequenceGenerator
    from tiny_fairseq import build, translation_sample, write_dictionaries

    torch.manual_seed(0)
    _, task, model, _ = build(write_dictionaries(tmp_path, size=12))
    model.eval()
    dictionary = task.target_dictionary
    sample = translation_sample(dictionary, batch=4, src_len=7, seed=3)
    with torch.no_grad():  # a random model whose hypotheses end at different lengths: peaky, eos likely
        model.decoder.embed_tokens.weight.normal_(0, 1.0)
        projection = torch.nn.Linear(16, len(dictionary))
        projection.weight = model.decoder.embed_tokens.weight
        projection.bias.zero_()
        projection.bias[dictionary.eos()] = 7.0
        model.decoder.output_projection = projection

    def search(lenpen, nbest):
        generator = SequenceGenerator([model], dictionary, beam_size=6, len_penalty=lenpen,
                                      max_len_b=15)
        with torch.no_grad():
            hypos = generator.generate([model], sample)
        return [[(" ".join(map(str, h["tokens"].tolist())), h["positional_scores"].tolist())
                 for h in sentence[:nbest]] for sentence in hypos]

    candidates = search(1.0, 6)
    picks = {}
    for lenpen in (0.0, 0.3, *quickstart.LENPENS, 3.0, 5.0):
        picks[lenpen] = [quickstart.best_by_lenpen(sentence, lenpen) for sentence in candidates]
        assert picks[lenpen] == [best[0][0] for best in search(lenpen, 1)]
    assert len({tuple(p) for p in picks.values()}) > 1  # the length penalty changed some choice


def test_the_cache_key_of_prepared_data_follows_the_corpus_content_not_its_path(tmp_path):
    corpora = [tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"]
    for raw in corpora:
        raw.mkdir(parents=True)
        for split in ("train", "valid", "test"):
            for lang in ("de", "en"):
                (raw / f"{split}.{lang}").write_text(f"{split} {lang}\n")
    args = parse("--work-dir", str(tmp_path / "w"))
    keys = [quickstart.prepared_dir(args, quickstart.CPU, raw) for raw in corpora]
    assert keys[0] == keys[1]
    (corpora[1] / "train.en").write_text("changed\n")
    assert quickstart.prepared_dir(args, quickstart.CPU, corpora[1]) != keys[0]
    assert quickstart.prepared_dir(args, quickstart.GPU, corpora[0]) != keys[0]


def refuse_to_run(args):
    """Stands in for the quickstart in tests of refused arguments: one let through fails here at once, not after a
    training run."""
    raise AssertionError(f"the quickstart ran with {args}")


@pytest.mark.parametrize("name", ["--rdrop-alpha", "--minutes", "--max-updates", "--workers"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_non_positive_value_is_refused_naming_the_flag(name, value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart, "quickstart", refuse_to_run)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main([name, value, "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and name in capsys.readouterr().err


@pytest.mark.parametrize("name", ["--out-dir", "--work-dir"])
def test_a_folder_flag_naming_a_file_is_refused_before_anything_runs(name, tmp_path, capsys, monkeypatch):
    """Not after preparing the corpus, with a traceback."""
    monkeypatch.setattr(quickstart, "quickstart", refuse_to_run)
    (tmp_path / "file").write_text("")
    (tmp_path / "corpus").mkdir()
    folders = {"--corpus": str(tmp_path / "corpus"), "--work-dir": str(tmp_path / "w"),
               "--out-dir": str(tmp_path / "o"), name: str(tmp_path / "file")}
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--smoke", *(arg for pair in folders.items() for arg in pair)])
    assert exit_info.value.code == 2 and f"{name} {tmp_path / 'file'}: not a folder" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus", "file"]


@pytest.mark.parametrize("args,said", [
    (["--rdrop-alpha", "inf"], "--rdrop-alpha must be a positive number, not inf"),
    (["--minutes", "nan"], "--minutes must be a positive number, not nan"),
    (["--minutes=inf"], "--minutes must be a positive number, not inf"),
])
def test_a_value_that_is_not_a_finite_number_is_refused_naming_the_flag(args, said, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse_args([*args, "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and said in capsys.readouterr().err


def test_one_language_as_source_and_target_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart, "quickstart", refuse_to_run)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--src", "en", "--tgt", "en", "--work-dir", str(tmp_path / "w"),
                         "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--src and --tgt are both 'en'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_corpus_flag_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "train.de").write_text("x\n")
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse_args(["--corpus", str(tmp_path / "train.de")])
    assert exit_info.value.code == 2 and f"--corpus {tmp_path / 'train.de'}: no such folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["--out-dir", "--work-dir"])
def test_a_folder_flag_naming_a_file_in_the_home_folder_as_tilde_is_refused(name, tmp_path, capsys, monkeypatch):
    # a shell leaves the ~ of --out-dir=~/x as it is
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse_args([name, "~/file"])
    assert exit_info.value.code == 2 and f"{name} {tmp_path / 'file'}: not a folder" in capsys.readouterr().err


def test_a_tilde_in_a_folder_flag_is_the_home_folder_for_every_folder_flag(tmp_path, monkeypatch):
    # not a folder named "~" in the current one, which --out-dir=~/runs used to make
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus").mkdir()
    args = quickstart.parse_args(["--out-dir=~/runs", "--work-dir=~/cache", "--corpus=~/corpus"])
    assert (args.out_dir, args.work_dir, args.corpus) == (tmp_path / "runs", tmp_path / "cache", tmp_path / "corpus")


def test_the_work_dir_defaults_to_the_xdg_cache_folder_where_it_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parse().work_dir == tmp_path / "xdg" / "rdrop_fairseq"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # set but empty counts as unset, as the XDG spec says
    assert parse().work_dir == tmp_path / "home" / ".cache" / "rdrop_fairseq"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert parse().work_dir == tmp_path / "home" / ".cache" / "rdrop_fairseq"


def test_the_defaults_the_help_states_are_the_parser_s():
    stated = {}
    for action in quickstart.build_parser()._actions:
        match = re.search(r"\(default (\S+)\)", action.help or "")
        if match:
            stated[action.dest] = (match.group(1), action.default)
    assert set(stated) >= {"src", "tgt", "out_dir", "seed", "workers"}
    for dest, (said, default) in stated.items():
        assert said in (str(default), f"./{default}"), dest


def test_the_docs_table_of_setups_is_the_cpu_and_gpu_setups():
    table = (REPO / "docs" / "quickstart.md").read_text(encoding="utf-8").split("| | on a CPU")[1].split("\n\n")[0]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                              for line in table.splitlines()[2:])}

    def number(text):
        return float(text.replace(",", ""))

    for column, setup in enumerate((quickstart.CPU, quickstart.GPU)):
        model = rows["model"][column]
        assert re.match(r"`(\w+)`", model).group(1) == setup.arch
        assert [number(n) for n in re.findall(r"(\d+)\+(\d+) layers", model)[0]] == [setup.layers] * 2
        assert number(re.search(r"d = ([\d,]+)", model).group(1)) == setup.embed_dim
        assert number(re.search(r"FFN ([\d,]+)", model).group(1)) == setup.ffn_dim
        assert number(re.search(r"(\d+) heads", model).group(1)) == setup.heads
        pairs = rows["training pairs"][column]
        assert pairs == (f"the first {setup.train_pairs:,}" if setup.train_pairs else "all")
        assert number(rows["BPE merges"][column]) == setup.bpe_merges
        assert number(rows["R-Drop alpha"][column].split()[0].rstrip(",")) == setup.alpha
        lr, warmup, weight_decay = rows["lr, warm-up, weight decay"][column].split(", ")
        assert (number(lr), number(warmup.split()[0]), number(weight_decay)) == (
            setup.lr, setup.warmup, setup.weight_decay)
        assert number(rows["`--max-tokens`"][column]) == setup.max_tokens
        assert number(rows["updates per run (default)"][column]) == setup.updates
        assert rows["validation and best checkpoint"][column] == f"every {setup.validate_every} updates"


def test_train_pairs_flag_sizes_the_training_slice_only():
    assert quickstart.plan_run(CPU, parse("--smoke")).setup == quickstart.SMOKE
    sized = quickstart.plan_run(CPU, parse("--train-pairs", "6000")).setup
    assert asdict(sized) == {**asdict(quickstart.CPU), "train_pairs": 6000}


def test_negative_train_pairs_are_refused_naming_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart, "quickstart", refuse_to_run)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--train-pairs", "-1", "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--train-pairs" in capsys.readouterr().err


def test_slice_keeps_the_first_lines_of_each_split(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 10), ("valid", 5), ("test", 5)):
        for lang in ("de", "en"):
            (raw / f"{split}.{lang}").write_text("".join(f"{split} {lang} {i}\n" for i in range(n)))
    sliced = quickstart.slice_corpus(raw, tmp_path / "slice", "de", "en", 3, 2)
    assert (sliced / "train.en").read_text() == "train en 0\ntrain en 1\ntrain en 2\n"
    assert (sliced / "test.de").read_text() == "test de 0\ntest de 1\n"
    assert quickstart.slice_corpus(raw, tmp_path / "unused", "de", "en", 0, 0) == raw


def test_a_slice_follows_the_corpus_content_not_its_folder_name(tmp_path):
    def corpus(folder, word):
        folder.mkdir(parents=True)
        for split in ("train", "valid", "test"):
            for lang in ("de", "en"):
                (folder / f"{split}.{lang}").write_text("".join(f"{word} {i}\n" for i in range(4)))
        return folder

    first, second = corpus(tmp_path / "a" / "tmp", "hallo"), corpus(tmp_path / "b" / "tmp", "welt")
    slices = [quickstart.slice_corpus(raw, tmp_path / "slices" / "tmp-2-2", "de", "en", 2, 2) for raw in (first, second)]
    assert [(s / "train.de").read_text() for s in slices] == ["hallo 0\nhallo 1\n", "welt 0\nwelt 1\n"]
    (first / "train.de").write_text("neu 0\nneu 1\nneu 2\n")  # edited in place
    edited = quickstart.slice_corpus(first, tmp_path / "slices" / "tmp-2-2", "de", "en", 2, 2)
    assert (edited / "train.de").read_text() == "neu 0\nneu 1\n"


def test_missing_corpus_file_names_the_flag(tmp_path, capsys):
    (tmp_path / "train.de").write_text("x\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["quickstart", "--corpus", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                  "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "--corpus" in capsys.readouterr().err


def test_a_corpus_already_split_by_bpe_is_refused_naming_the_flag(tmp_path, capsys):
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (tmp_path / f"{split}.{lang}").write_text("ein Bei@@ spiel\n")
    with pytest.raises(SystemExit):
        cli.main(["quickstart", "--corpus", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                  "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "--corpus" in err and "BPE" in err and not (tmp_path / "w").exists()


def test_without_apt_the_error_says_what_to_pass(tmp_path, monkeypatch, capsys):
    def no_apt(*_):
        raise RuntimeError("apt-get not found")

    monkeypatch.setattr(lohelp, "download_debs", no_apt)
    shared = tmp_path / "shared" / "corpora"
    monkeypatch.setattr(quickstart, "SHARED_CORPORA", shared)

    def error():
        with pytest.raises(SystemExit):
            quickstart.main(["--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
        return capsys.readouterr().err

    err = error()
    assert "apt-get not found" in err and "--corpus DIR --src de --tgt en" in err
    assert "a parallel corpus you already have" in err and "beside this checkout" not in err
    sibling = shared / "lohelp-de-en"  # a copy of the corpus beside the checkout: the hint names it
    sibling.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (sibling / f"{split}.{lang}").write_text("x\n")
    err = error()
    assert "--corpus DIR --src de --tgt en" in err and f"--corpus {sibling} --src de --tgt en" in err


def test_the_shared_corpora_looked_for_lie_beside_the_checkout():
    assert quickstart.SHARED_CORPORA == REPO.parent / "shared" / "corpora" == SHARED_CORPUS.parent


# A stand-in for fairseq-train: writes its process id to the file it is given, says so, then runs long.
LONG_COMMAND = """import os, sys, time
with open(sys.argv[1] + ".part", "w") as handle:
    handle.write(str(os.getpid()))
os.replace(sys.argv[1] + ".part", sys.argv[1])
print("started", flush=True)
time.sleep(300)
"""


def wait_for_file(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path


def running(pid, grace=5.0):
    """Whether process ``pid`` is still there (not yet stopped, or a zombie nobody reaped) after ``grace``
    seconds at most."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def kill_if_running(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_command_is_stopped_when_run_logged_is_left_by_an_exception(tmp_path):
    pid_file = tmp_path / "command.pid"

    def failing_echo(line):  # anything that goes wrong while the command runs
        raise RuntimeError("stopped while reading")

    with pytest.raises(RuntimeError, match="stopped while reading"):
        quickstart.run_logged([sys.executable, "-c", LONG_COMMAND, str(pid_file)], tmp_path / "log", failing_echo)
    pid = int(pid_file.read_text())
    try:
        assert not running(pid)
    finally:
        kill_if_running(pid)


# A command that says it is ready, then outlives SIGTERM.
IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                   "time.sleep(300)")


def test_stop_process_kills_a_command_that_ignores_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        start = time.monotonic()
        quickstart.stop_process(proc, timeout=0.5)
        assert proc.returncode == -signal.SIGKILL and time.monotonic() - start < 10
    finally:
        if proc.poll() is None:
            proc.kill()


# Writes its own file, then waits for its partner's: two of them get past the wait only when they run at once.
RENDEZVOUS = """import pathlib, sys, time
me, partner, status = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
me.touch()
deadline = time.monotonic() + 30
while not partner.exists():
    if time.monotonic() > deadline:
        print("alone", flush=True)
        sys.exit(9)
    time.sleep(0.05)
print(f"met {partner.name}", flush=True)
print("last line", flush=True)
sys.exit(status)
"""


def test_commands_run_together_each_logged_and_one_that_fails_leaves_the_other_to_end(tmp_path, capsys):
    def job(name, partner, status):
        cmd = [sys.executable, "-c", RENDEZVOUS, str(tmp_path / name), str(tmp_path / partner), str(status)]
        return cmd, tmp_path / f"{name}.log", lambda line: f"[{name}] {line}"

    outcomes = quickstart.run_logged_together({"a": job("a", "b", 0), "b": job("b", "a", 3)})
    assert outcomes["a"].error is None and outcomes["a"].lines == ["met b", "last line"]
    assert (tmp_path / "a.log").read_text() == "met b\nlast line\n"
    error = outcomes["b"].error
    assert isinstance(error, RuntimeError) and "exit 3" in str(error) and "met a\nlast line" in str(error)
    assert (tmp_path / "b.log").read_text() == "met a\nlast line\n"
    assert all(0 < outcome.wall_s < 60 for outcome in outcomes.values())
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == ["[a] last line", "[a] met b", "[b] last line", "[b] met a"]


def test_a_command_run_together_is_recorded_as_soon_as_it_succeeds(tmp_path):
    """The record of a run that ended is written while the other still runs: a stop then keeps it."""
    recorded = tmp_path / "quick.recorded"
    waits_for_the_record = [sys.executable, "-c", RENDEZVOUS, str(tmp_path / "long"), str(recorded), "0"]
    outcomes = quickstart.run_logged_together(
        {"quick": ([sys.executable, "-c", "print('done')"], tmp_path / "quick.log", lambda line: None),
         "long": (waits_for_the_record, tmp_path / "long.log", lambda line: None)},
        on_success=lambda name, wall_s: name == "quick" and recorded.write_text(str(wall_s)))
    assert outcomes["long"].error is None and outcomes["long"].lines == ["met quick.recorded", "last line"]
    assert 0 < float(recorded.read_text()) <= outcomes["long"].wall_s


@pytest.fixture
def ctrl_c_raises():
    """_thread.interrupt_main stands in for Ctrl-C: it raises KeyboardInterrupt only while SIGINT has Python's
    default handler, whatever an earlier test in this worker left there; and a finalizer of an earlier test's
    garbage that ran while the interrupt is pending would swallow it, so that garbage goes first."""
    gc.collect()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_interruption_while_stopping_still_stops_every_command(tmp_path, ctrl_c_raises):
    procs = [subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        threading.Timer(0.5, _thread.interrupt_main).start()  # as a second Ctrl-C or SIGTERM would
        with pytest.raises(KeyboardInterrupt):
            quickstart.stop_processes(procs, timeout=3.0)
        assert [proc.returncode for proc in procs] == [-signal.SIGKILL] * 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_stop_does_not_wait_for_a_pipe_that_a_command_s_child_holds_open(tmp_path, ctrl_c_raises):
    """Closing a pipe that another thread reads waits for that read: a command's child that keeps the pipe
    open must not hold up the stop."""
    children = []

    def interrupt_once_started(line):
        children.append(int(line))
        _thread.interrupt_main()

    cmd = ["sh", "-c", "sleep 60 & echo $!; wait"]
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            quickstart.run_logged_together({"a": (cmd, tmp_path / "a.log", interrupt_once_started)})
        assert time.monotonic() - start < 20
    finally:
        for pid in children:
            kill_if_running(pid)


def test_a_command_run_together_is_stopped_when_reading_its_output_fails(tmp_path):
    pid_file = tmp_path / "command.pid"

    def failing_echo(line):
        raise RuntimeError("stopped while reading")

    outcomes = quickstart.run_logged_together({
        "long": ([sys.executable, "-c", LONG_COMMAND, str(pid_file)], tmp_path / "long.log", failing_echo),
        "short": ([sys.executable, "-c", "print('done')"], tmp_path / "short.log", lambda line: None)})
    pid = int(pid_file.read_text())
    try:
        assert not running(pid)
        assert "stopped while reading" in str(outcomes["long"].error)
        assert outcomes["short"].error is None and outcomes["short"].lines == ["done"]
    finally:
        kill_if_running(pid)


# Runs quickstart.main with its training replaced by one long command, as the real one waits for fairseq-train.
SIGNALLED_QUICKSTART = """import sys
from pathlib import Path
from rdrop_fairseq.recipes import quickstart

folder = Path(sys.argv[1])


def one_long_command(args):
    quickstart.run_logged([sys.executable, "-c", sys.argv[2], str(folder / "command.pid")], folder / "log")


def two_long_commands(args):
    quickstart.run_logged_together({name: ([sys.executable, "-c", sys.argv[2], str(folder / f"{name}.pid")],
                                           folder / f"{name}.log", lambda line: line)
                                    for name in ("command", "other")})


quickstart.quickstart = two_long_commands if sys.argv[3:] == ["together"] else one_long_command
quickstart.main(["--cpu", "--work-dir", str(folder / "work"), "--out-dir", str(folder / "out")])
"""


@pytest.mark.parametrize("signum, together",
                         [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGTERM, True)],
                         ids=["SIGTERM", "SIGHUP", "SIGTERM-concurrent"])
def test_a_quickstart_stopped_by_a_signal_stops_the_command_it_runs(tmp_path, signum, together):
    """`kill PID`, a scheduler's stop or a closed terminal: fairseq-train must not go on on its own, nor
    the other run's beside it under --concurrent."""
    parent = subprocess.Popen([sys.executable, "-c", SIGNALLED_QUICKSTART, str(tmp_path), LONG_COMMAND,
                               *(["together"] if together else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              start_new_session=True)
    pids = []
    try:
        for name in ("command", "other") if together else ("command",):
            pids.append(int(wait_for_file(tmp_path / f"{name}.pid").read_text()))
        os.kill(parent.pid, signum)
        _, err = parent.communicate(timeout=60)
        for pid in pids:
            assert not running(pid), "a command outlived the quickstart"
        assert parent.returncode == 128 + signum, err[-2000:]
        assert f"{signal.Signals(signum).name} received; stopping" in err
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in pids:
            kill_if_running(pid)


def read(path):
    return path.read_text(encoding="utf-8").splitlines()


FAKE_PIP = """#!/usr/bin/env bash
# Stands in for the venv's pip: records its arguments and, for the package itself, makes the test's own
# site-packages visible to the new environment instead of downloading anything.
set -euo pipefail
echo "$*" >> "$PIP_CALLS"
if [[ " $* " == *" -e "* ]]; then
    site=$("$RDROP_QUICKSTART_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\\n' "$TEST_SITE_PACKAGES" > "$site/quickstart-test-deps.pth"
fi
"""


def quickstart_env(tmp_path, python):
    fake_pip = tmp_path / "fake-pip"
    fake_pip.write_text(FAKE_PIP)
    fake_pip.chmod(0o755)
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    return dict(os.environ, PYTHON=str(python), RDROP_QUICKSTART_VENV=str(tmp_path / "venv"),
                RDROP_QUICKSTART_PIP=str(fake_pip), PIP_CALLS=str(tmp_path / "pip-calls"),
                TEST_SITE_PACKAGES="\n".join(site_packages))


def run_script(env, *args, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


SCRIPT = REPO / "scripts" / "quickstart.sh"
MODULE_ERROR = "missing train.de"  # what module_probe's arguments make the quickstart module say


def module_probe(tmp_path):
    """Arguments that pass the command line's own check, which needs no dependencies, and fail in the
    quickstart module, which does: that they fail there says which interpreter ran it."""
    empty = tmp_path / "empty-corpus"
    empty.mkdir(exist_ok=True)
    return "--cpu", "--corpus", str(empty), "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")


def test_with_the_dependencies_installed_the_script_runs_them_as_they_are(tmp_path):
    result = run_script(quickstart_env(tmp_path, sys.executable), *module_probe(tmp_path))
    # the quickstart module answered: it ran, and nothing was installed
    assert result.returncode == 1 and MODULE_ERROR in result.stderr
    assert "installing" not in result.stdout and "lacks" not in result.stdout
    assert not (tmp_path / "pip-calls").exists() and not (tmp_path / "venv").exists()


def test_without_the_dependencies_help_still_prints_the_usage(tmp_path):
    bare = bare_python(tmp_path)
    result = run_script(quickstart_env(tmp_path, bare), "--help")
    assert result.returncode == 0 and "Usage: scripts/quickstart.sh" in result.stdout
    assert "--max-updates MAX_UPDATES" in result.stdout and "--workers WORKERS" in result.stdout  # every option
    assert not (tmp_path / "venv").exists()
    for later in (["--smoke", "--help"], ["--smoke", "--he"]):  # anywhere, and abbreviated as argparse allows
        result = run_script(quickstart_env(tmp_path, bare), *later)
        assert result.returncode == 0 and result.stdout.count("usage:") == 1 and "--workers WORKERS" in result.stdout, later
        assert not (tmp_path / "venv").exists() and not (tmp_path / "pip-calls").exists()


@pytest.mark.parametrize("args,said", [
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--max-updates", "0"], "--max-updates must be positive"),
    (["--max-updates", "abc"], "argument --max-updates: invalid int value: 'abc'"),
    # nan passes a "<= 0" check: R-Drop at alpha nan trained as a second baseline
    (["--rdrop-alpha", "nan"], "--rdrop-alpha must be a positive number, not nan: the baseline run is the alpha 0 one"),
    (["--minutes", "inf"], "--minutes must be a positive number, not inf"),
    (["--corpus", "/no/such/corpus"], "--corpus /no/such/corpus: no such folder"),
])
def test_a_mistake_on_the_command_line_is_one_line_said_before_anything_is_installed(tmp_path, args, said):
    result = run_script(quickstart_env(tmp_path, bare_python(tmp_path)), *args)
    assert result.returncode == 2
    assert result.stderr == f"{SCRIPT}: error: {said} (all options: {SCRIPT} --help)\n"
    assert result.stdout == "" and not (tmp_path / "venv").exists() and not (tmp_path / "pip-calls").exists()


def bare_python(tmp_path, name="bare") -> Path:
    """A fresh interpreter without any of the project's dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / name)], check=True)
    python = tmp_path / name / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    return python


def path_env(tmp_path, python, python3):
    """The script's environment with PYTHON unset and, first on PATH, `python` and `python3` running the
    interpreters given."""
    env = quickstart_env(tmp_path, "unused")
    del env["PYTHON"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in (("python", python), ("python3", python3)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return env


def test_unset_python_runs_with_python3_when_only_it_has_the_dependencies(tmp_path):
    """`python` is another interpreter (or Python 2), the packages were installed with pip3."""
    result = run_script(path_env(tmp_path, python=bare_python(tmp_path), python3=sys.executable),
                        *module_probe(tmp_path))
    assert result.returncode == 1 and MODULE_ERROR in result.stderr
    assert "lack" not in result.stdout and "installing" not in result.stdout
    assert not (tmp_path / "pip-calls").exists() and not (tmp_path / "venv").exists()


def test_unset_python_with_neither_interpreter_ready_makes_the_environment_with_python3(tmp_path):
    """...and an installation whose modules do not import leaves no marker: the next run installs again."""
    env = path_env(tmp_path, python=bare_python(tmp_path, "bare-python"),
                   python3=bare_python(tmp_path, "bare-python3"))
    recording_pip = tmp_path / "recording-pip"  # succeeds, installs nothing
    recording_pip.write_text('#!/bin/sh\necho "$*" >> "$PIP_CALLS"\n')
    recording_pip.chmod(0o755)
    env["RDROP_QUICKSTART_PIP"] = str(recording_pip)
    result = run_script(env, *module_probe(tmp_path))
    venv = tmp_path / "venv"
    made_by = [line for line in (venv / "pyvenv.cfg").read_text().splitlines() if line.startswith("command")]
    assert made_by == [f"command = {tmp_path}/bare-python3/bin/python -m venv {venv}"]
    assert "quickstart: python and python3 lack rdrop_fairseq's dependencies" in result.stdout
    assert len(read(tmp_path / "pip-calls")) == 3
    assert result.returncode == 2 and "missing or broken" in result.stderr and "No module named" in result.stderr
    assert not (venv / ".quickstart-installed").exists()


def test_an_environment_left_unfinished_is_installed_into_again_then_reused(tmp_path):
    """An installation cut off in `pip install` leaves an environment whose packages are found (a module
    that pip was unpacking is found, not importable); only the marker of a finished installation counts."""
    env = quickstart_env(tmp_path, bare_python(tmp_path))
    venv, marker = tmp_path / "venv", tmp_path / "venv" / ".quickstart-installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "finished-packages.pth").write_text(env["TEST_SITE_PACKAGES"] + "\n")  # those pip had finished
    (site / "fairseq").mkdir()  # the one it was unpacking: its first file only
    (site / "fairseq" / "__init__.py").write_text(
        Path(__import__("fairseq").__file__).read_text(encoding="utf-8"), encoding="utf-8")

    first = run_script(env, *module_probe(tmp_path))
    assert (tmp_path / "pip-calls").exists(), "the unfinished environment was used as it was"
    assert read(tmp_path / "pip-calls")[-1] == f"install -q -e {REPO}"  # the stand-in repairs nothing
    assert "has no record of a finished installation" in first.stdout and "installing into it again" in first.stdout
    assert first.returncode == 2 and "missing or broken" in first.stderr and not marker.exists()

    shutil.rmtree(site / "fairseq")  # as pip's reinstallation of fairseq would
    second = run_script(env, *module_probe(tmp_path))
    assert "has no record of a finished installation" in second.stdout
    assert second.returncode == 1 and MODULE_ERROR in second.stderr and marker.is_file()
    calls = read(tmp_path / "pip-calls")
    assert len(calls) == 6

    third = run_script(env, *module_probe(tmp_path))
    assert third.returncode == 1 and MODULE_ERROR in third.stderr
    assert f"using {venv}/bin/python" in third.stdout and read(tmp_path / "pip-calls") == calls


def test_an_environment_that_lost_its_dependencies_keeps_no_marker_while_it_is_installed_into_again(tmp_path):
    """A reinstallation cut off (here: pip fails at once) must not leave the old marker to vouch for it."""
    env = quickstart_env(tmp_path, bare_python(tmp_path))
    venv, marker = tmp_path / "venv", tmp_path / "venv" / ".quickstart-installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    marker.write_text("installed 2026-01-01T00:00:00Z\n")
    failing_pip = tmp_path / "failing-pip"
    failing_pip.write_text('#!/bin/sh\necho "$*" >> "$PIP_CALLS"\nexit 1\n')
    failing_pip.chmod(0o755)
    env["RDROP_QUICKSTART_PIP"] = str(failing_pip)
    result = run_script(env, *module_probe(tmp_path))
    assert "has lost some of them; installing them into it again" in result.stdout
    assert result.returncode == 1 and len(read(tmp_path / "pip-calls")) == 1 and not marker.exists()


@pytest.mark.e2e
def test_smoke_run_on_a_fresh_interpreter_installs_then_prints_the_table_and_draws_the_curves(tmp_path):
    corpus("lohelp-de-en")  # fails, never skips, without the corpus
    env = quickstart_env(tmp_path, bare_python(tmp_path))
    venv = tmp_path / "venv"
    result = run_script(env, "--smoke", "--cpu", "--corpus", str(SHARED_CORPUS), "--work-dir",
                        str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "lacks rdrop_fairseq's dependencies" in out and f"installing them into the virtual environment {venv}" in out
    calls = read(tmp_path / "pip-calls")
    assert calls[1] == "install -q torch==2.13.0" and calls[2] == f"install -q -e {REPO}"
    assert f"running: {venv}/bin/python -m fairseq_cli.train" in out  # the run used the new environment
    assert (venv / ".quickstart-installed").is_file()  # the installation finished: later runs reuse it

    assert quickstart.TABLE_HEADER in out
    rows = [line for line in out.splitlines() if line.startswith(("| baseline |", "| rdrop |"))]
    assert len(rows) == 2 and all(row.split("|")[8].strip() == "6" for row in rows)
    assert "[rdrop] 6/6 updates" in out and "[baseline] 3/6 updates" in out  # progress reaches the console
    assert f"**Warning:** {quickstart.SMOKE_WARNING}" in out  # and no other: the default number of updates
    assert out.count("**Warning:**") == 1

    png = tmp_path / "out" / "curves.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(png).ndim == 3
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    results = summary["results"]
    assert set(results) == {"baseline", "rdrop"} and results["rdrop"]["updates"] == 6
    assert all(r["lenpen"] in quickstart.LENPENS and 0 < r["bp"] <= 1 for r in results.values())
    assert summary["warnings"] == [quickstart.SMOKE_WARNING]

    prepared = Path(summary["corpus"])
    for lang in ("de", "en"):
        train = set(read(prepared / f"train.{lang}"))
        assert not train & set(read(prepared / f"valid.{lang}")) and not train & set(read(prepared / f"test.{lang}"))
    hyps = read(tmp_path / "out" / "rdrop" / "test.hyp.en")
    assert len(hyps) == len(read(prepared / "test.en")) == quickstart.SMOKE.heldout_pairs

    again = run_script(env, *module_probe(tmp_path))  # a second run finds the environment made by the first
    assert again.returncode == 1 and MODULE_ERROR in again.stderr
    assert f"using {venv}/bin/python" in again.stdout and len(read(tmp_path / "pip-calls")) == len(calls)


def test_the_scripts_usage_lines_name_every_option():
    header = (REPO / "scripts" / "quickstart.sh").read_text().split("\nset -euo")[0]
    usage = header.split("# Usage:")[1].split("# Env:")[0]
    options = {opt for action in quickstart.build_parser()._actions for opt in action.option_strings
               if opt.startswith("--") and opt != "--help"}
    assert options == set(re.findall(r"--[a-z][a-z-]*", usage))


@pytest.mark.e2e
def test_a_run_cut_off_goes_on_from_its_last_checkpoint_to_the_model_of_a_run_never_stopped(tmp_path, monkeypatch):
    import torch

    corpus("lohelp-de-en")
    monkeypatch.setattr(quickstart, "RUNS", ("rdrop",))
    args = parse("--smoke", "--cpu", "--corpus", str(SHARED_CORPUS), "--work-dir", str(tmp_path / "work"))
    plan, setup = quickstart.plan_run(quickstart.Device(cuda=False), args), quickstart.SMOKE
    raw = quickstart.resolve_corpus(args)
    raw = quickstart.slice_corpus(raw, tmp_path / "work" / "slice", "de", "en", setup.train_pairs, setup.heldout_pairs)
    bin_dir = quickstart.prepare_data(args, setup, raw)
    quickstart.train_runs(bin_dir, tmp_path / "whole", plan, args)

    # cut off at update 4 of 6, after its update checkpoint at 3: the same command, stopped there
    run_dir = tmp_path / "cut" / "rdrop"
    cmd = quickstart.train_command(bin_dir, run_dir, plan, plan.alpha, args, setup.updates, 0.0)
    inputs = quickstart.run_inputs(bin_dir)
    _, run_cmd = quickstart.begin_run("rdrop", run_dir, cmd, inputs)
    quickstart.run_logged(run_cmd + ["--max-update", "4"], run_dir / "stdout.log", echo=lambda line: None)
    assert not (run_dir / quickstart.FINISHED).exists()
    time.sleep(2)  # the attempts' times are whole seconds in fairseq's log
    walls = quickstart.train_runs(bin_dir, tmp_path / "cut", plan, args)
    assert "checkpoint_1_3.pt (epoch 1 @ 3 updates)" in (run_dir / "stdout.log").read_text()
    assert (run_dir / "stdout.1.log").is_file()  # the cut-off attempt's output is kept
    assert walls["rdrop"] > 0 and quickstart.finished_wall(run_dir, cmd, inputs) == walls["rdrop"]

    def model(out):
        [last] = (out / "rdrop" / "checkpoints").glob("checkpoint_*_6.pt")
        return torch.load(last, map_location="cpu", weights_only=False)["model"]

    whole, resumed = model(tmp_path / "whole"), model(tmp_path / "cut")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    inner = quickstart.plot.read_log(run_dir / "train.log")["train_inner"]
    assert [r["num_updates"] for r in inner] == [1, 2, 3, 4, 5, 6]  # update 4 is logged once, after the cut
    # fairseq's clock restarts at 0 in the second attempt; the log goes on from the first attempt's time
    walls_logged = [r["wall"] for r in inner]
    assert walls_logged == sorted(walls_logged) and walls_logged[3] >= walls_logged[2] > 0

    # at its last update, or without a whole best checkpoint, a run is not gone on with but trained afresh
    done = tmp_path / "whole" / "rdrop"
    whole_cmd = quickstart.train_command(bin_dir, done, plan, plan.alpha, args, setup.updates, 0.0)
    assert quickstart.resume_point(done, whole_cmd, inputs) is None
    (run_dir / quickstart.FINISHED).unlink()
    best = run_dir / "checkpoints" / "checkpoint_best.pt"
    best.write_bytes(best.read_bytes()[:-100])
    assert quickstart.resume_point(run_dir, cmd, inputs) is None
