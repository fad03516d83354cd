import json

import matplotlib.image
import pytest

from rdrop_fairseq.recipes import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_log(path, kl=True, prefix="", ppl=True):
    lines = ["{'_name': None, 'common': {}}", "TransformerModel("]
    for update in range(10, 60, 10):
        inner = {"epoch": 1, "loss": f"{10 - update / 10:.3f}", "num_updates": str(update),
                 "wps": "900", "wall": str(update * 2)}
        if kl:
            inner["kl_loss"] = f"{1 / update:.4f}"
        lines.append(prefix.format(tag="train_inner") + json.dumps(inner))
        if update % 20 == 0:
            valid = {"epoch": 1, "valid_loss": f"{9 - update / 20:.3f}", "valid_num_updates": str(update),
                     "valid_bleu": str(update / 10)}
            if ppl:
                valid["valid_ppl"] = "100"
            lines.append(prefix.format(tag="valid") + json.dumps(valid))
    lines.append(prefix.format(tag="train") + json.dumps({"epoch": 1, "train_loss": "5.0", "train_wall": "100"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("prefix", ["", "2026-01-01 00:00:00 | INFO | {tag} | "])
def test_log_file_and_captured_stdout_give_the_same_records(tmp_path, prefix):
    records = plot.read_log(fake_log(tmp_path / "run" / "train.log", prefix=prefix))
    assert [r["num_updates"] for r in records["train_inner"]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert [r["valid_loss"] for r in records["valid"]] == [8.0, 7.0]
    # a validation is placed at the wall-clock time of the training record before it
    assert [r["wall"] for r in records["valid"]] == [40.0, 80.0]
    assert records["train"][0]["train_loss"] == 5.0


def test_lines_repeated_by_fairseqs_log_file_handlers_count_once(tmp_path):
    log = fake_log(tmp_path / "train.log")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(line for i, line in enumerate(lines) for _ in range(1 + i % 3)) + "\n")
    records = plot.read_log(log)
    assert [r["num_updates"] for r in records["train_inner"]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert [r["valid_loss"] for r in records["valid"]] == [8.0, 7.0]


def test_plot_writes_a_decodable_png_with_all_panels(tmp_path):
    runs = {"baseline": plot.read_log(fake_log(tmp_path / "a" / "train.log", kl=False)),
            "rdrop": plot.read_log(fake_log(tmp_path / "b" / "train.log"))}
    out = plot.plot_runs(runs, tmp_path / "fig" / "curves.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 3 * height / 2 > 0  # 6 panels laid out 3 x 2


def drawn_panels(runs, out, monkeypatch):
    """{title: {run: (x, y)}} of the figure plot_runs draws."""
    import matplotlib.pyplot as plt

    figs = []
    subplots = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figs.append(subplots(*a, **k)) or figs[-1])
    plot.plot_runs(runs, out)
    (fig, _), = figs
    return {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
            for ax in fig.axes if ax.axison}


def test_each_panel_plots_its_own_series(tmp_path, monkeypatch):
    runs = {"baseline": plot.read_log(fake_log(tmp_path / "a" / "train.log", kl=False)),
            "rdrop": plot.read_log(fake_log(tmp_path / "b" / "train.log"))}
    panels = drawn_panels(runs, tmp_path / "c.png", monkeypatch)
    assert list(panels) == ["train loss vs updates", "valid loss vs updates", "train loss vs wall-clock",
                            "valid loss vs wall-clock", "KL between sub-models vs updates", "valid BLEU vs updates"]
    valid = ([20.0, 40.0], [8.0, 7.0])
    assert panels["valid loss vs updates"] == {"baseline": valid, "rdrop": valid}
    assert panels["valid loss vs wall-clock"]["rdrop"] == ([40.0, 80.0], [8.0, 7.0])
    # the baseline logs no kl_loss
    assert panels["KL between sub-models vs updates"] == {
        "rdrop": ([10.0, 20.0, 30.0, 40.0, 50.0], [0.1, 0.05, 0.0333, 0.025, 0.02])}


def test_non_finite_values_are_left_out_of_the_curves(tmp_path, monkeypatch):
    log = fake_log(tmp_path / "run" / "train.log")
    log.write_text(log.read_text().replace('"loss": "7.000"', '"loss": "inf"')
                   .replace('"valid_loss": "7.000"', '"valid_loss": "nan"'))
    panels = drawn_panels({"run": plot.read_log(log)}, tmp_path / "c.png", monkeypatch)
    assert panels["train loss vs updates"] == {"run": ([10.0, 20.0, 40.0, 50.0], [9.0, 8.0, 6.0, 5.0])}
    assert panels["valid loss vs updates"] == {"run": ([20.0], [8.0])}


def test_valid_records_without_a_perplexity_are_read(tmp_path):
    # sentence_prediction (the GLUE tasks) logs valid_loss but no valid_ppl
    records = plot.read_log(fake_log(tmp_path / "train.log", ppl=False))
    assert [r["valid_loss"] for r in records["valid"]] == [8.0, 7.0]


@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_the_format_follows_the_output_name(tmp_path, suffix, magic):
    runs = {"rdrop": plot.read_log(fake_log(tmp_path / "b" / "train.log"))}
    out = plot.plot_runs(runs, tmp_path / f"curves{suffix}")
    assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", f"curves{suffix}"]


def test_an_output_name_without_suffix_gets_a_png(tmp_path):
    runs = {"rdrop": plot.read_log(fake_log(tmp_path / "b" / "train.log"))}
    out = plot.plot_runs(runs, tmp_path / "curves")
    assert out.name == "curves" and out.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "curves"]


def test_an_unknown_format_is_refused_and_leaves_no_file(tmp_path, capsys):
    fake_log(tmp_path / "b" / "train.log")
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "b"), "--out", str(tmp_path / "curves.xyz")])
    assert "xyz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_cli_labels_runs_by_folder(tmp_path, capsys):
    fake_log(tmp_path / "baseline" / "train.log", kl=False)
    fake_log(tmp_path / "rdrop" / "stdout.log", prefix="x | INFO | {tag} | ")
    plot.main([str(tmp_path / "baseline"), str(tmp_path / "rdrop"), "--out", str(tmp_path / "c.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_prints_no_matplotlib_debug_lines(tmp_path):
    """fairseq's import sets the root logger to DEBUG; matplotlib's font search must not flood stderr."""
    import subprocess
    import sys

    fake_log(tmp_path / "run" / "train.log")
    proc = subprocess.run([sys.executable, "-m", "rdrop_fairseq.recipes.plot", str(tmp_path / "run"), "--out",
                           str(tmp_path / "c.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "matplotlib" not in proc.stderr, proc.stderr[:2000]


def test_cli_rejects_a_folder_without_logs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path)])
    assert "no fairseq log" in capsys.readouterr().err


def test_log_without_json_records_is_rejected(tmp_path):
    (tmp_path / "train.log").write_text("2026 | INFO | fairseq_cli.train | started\n")
    with pytest.raises(ValueError, match="--log-format json"):
        plot.read_log(tmp_path)


def test_cli_refuses_two_runs_with_the_same_legend_name(tmp_path, capsys):
    fake_log(tmp_path / "exp1" / "baseline" / "train.log")
    fake_log(tmp_path / "exp2" / "baseline" / "train.log")
    runs = [str(tmp_path / "exp1" / "baseline"), str(tmp_path / "exp2" / "baseline" / "train.log")]
    with pytest.raises(SystemExit):
        plot.main([*runs, "--out", str(tmp_path / "c.png")])
    assert "same legend name (baseline)" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    plot.main([*runs, "--labels", "one", "two", "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE
