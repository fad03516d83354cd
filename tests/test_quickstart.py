import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import matplotlib.image
import pytest

from rdrop_fairseq import cli, lohelp, quickstart

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpora" / "lohelp-de-en"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_table_has_one_row_per_run_with_every_column():
    row = {"bleu": 12.345, "bleu_ci95": 0.7, "bleu_p": None, "best_valid_loss": 4.5, "valid_ppl": 22.6,
           "updates": 300, "wall_s": 90.0, "words_per_s": 1234.4}
    table = quickstart.format_table({"baseline": row, "rdrop": dict(row, bleu=13.0, bleu_p=0.0123)}).splitlines()
    assert table[0] == quickstart.TABLE_HEADER and table[0].count("|") == 9 and "words/s" in table[0]
    assert table[2] == "| baseline | 12.35 ± 0.70 | – | 4.500 | 22.60 | 300 | 1.5 min | 1234 |"
    assert table[3].startswith("| rdrop | 13.00 ± 0.70 | 0.012 |")


def test_bleu_comes_with_its_confidence_interval_and_a_paired_p_value():
    import sacrebleu

    refs = [f"the cat number {i} sat on the mat near door {i % 7}" for i in range(60)]
    worse = [ref if i % 3 else "a dog" for i, ref in enumerate(refs)]
    better = [ref if i % 9 else "a dog" for i, ref in enumerate(refs)]
    scores = quickstart.bleu_with_significance({"baseline": worse, "rdrop": better}, refs)
    assert scores["baseline"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(worse, [refs]).score)
    assert scores["baseline"]["bleu_p"] is None and scores["baseline"]["bleu_ci95"] > 0
    assert scores["rdrop"]["bleu"] > scores["baseline"]["bleu"] and scores["rdrop"]["bleu_p"] < 0.01


def test_both_runs_share_every_setting_but_alpha(tmp_path):
    args = quickstart.build_parser().parse_args(["--cpu"])
    cmds = {alpha: quickstart.train_command(tmp_path, tmp_path / "run", quickstart.FULL, alpha, args, 100, 0.1)
            for alpha in (0.0, 5.0)}
    differing = [(a, b) for a, b in zip(cmds[0.0], cmds[5.0]) if a != b]
    assert differing == [("0.0", "5.0")]
    cmd = cmds[5.0]
    for flag, value in (("--criterion", "rdrop_label_smoothed_cross_entropy"), ("--task", "rdrop_translation"),
                        ("--log-format", "json"), ("--max-update", "100")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--log-file" in cmd and "--stop-time-hours" in cmd and "--cpu" in cmd


def test_rdrop_run_takes_the_alpha_flag_and_the_baseline_zero(tmp_path, monkeypatch):
    alphas = []

    def fake_run(cmd, log, echo=None):
        alphas.append(cmd[cmd.index("--rdrop-alpha") + 1])
        return []

    monkeypatch.setattr(quickstart, "run_logged", fake_run)
    args = quickstart.build_parser().parse_args(["--rdrop-alpha", "0.5"])
    walls = quickstart.train_runs(tmp_path, tmp_path / "out", quickstart.SMOKE, args, 60.0)
    assert alphas == ["0.5", "0.0"] and set(walls) == {"rdrop", "baseline"}
    assert quickstart.build_parser().parse_args([]).rdrop_alpha == 2.0


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_non_positive_alpha_is_refused_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--rdrop-alpha", value])
    assert exit_info.value.code == 2 and "--rdrop-alpha" in capsys.readouterr().err


def test_train_pairs_flag_sizes_the_training_slice_only():
    parse = quickstart.build_parser().parse_args
    assert quickstart.chosen_setup(parse([])) == quickstart.FULL
    assert quickstart.chosen_setup(parse(["--smoke"])) == quickstart.SMOKE
    sized = quickstart.chosen_setup(parse(["--train-pairs", "6000"]))
    assert asdict(sized) == {**asdict(quickstart.FULL), "train_pairs": 6000}


def test_negative_train_pairs_are_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--train-pairs", "-1"])
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
    with pytest.raises(SystemExit):
        quickstart.main(["--work-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "apt-get not found" in err and "--corpus DIR --src de --tgt en" in err


def read(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.e2e
@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason=f"needs {SHARED_CORPUS}")
def test_smoke_run_prints_the_table_and_draws_the_curves(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "quickstart.sh"), "--smoke", "--cpu", "--corpus", str(SHARED_CORPUS),
         "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert quickstart.TABLE_HEADER in out
    rows = [line for line in out.splitlines() if line.startswith(("| baseline |", "| rdrop |"))]
    assert len(rows) == 2 and all(row.split("|")[6].strip() == "6" for row in rows)
    assert '"num_updates"' in out  # fairseq's progress reaches the console

    png = tmp_path / "out" / "curves.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(png).ndim == 3
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert set(results) == {"baseline", "rdrop"} and results["rdrop"]["updates"] == 6

    corpus = Path(json.loads((tmp_path / "out" / "results.json").read_text())["corpus"])
    for lang in ("de", "en"):
        train = set(read(corpus / f"train.{lang}"))
        assert not train & set(read(corpus / f"valid.{lang}")) and not train & set(read(corpus / f"test.{lang}"))
    hyps = read(tmp_path / "out" / "rdrop" / "test.hyp.en")
    assert len(hyps) == len(read(corpus / "test.en")) == quickstart.SMOKE.heldout_pairs
