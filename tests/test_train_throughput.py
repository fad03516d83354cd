"""benchmarks/train_throughput.py end to end on a toy corpus: both fairseq-train runs happen and its table
holds what the header says (a GPU run costs device time, so it must not be the first to find a break); its
figures are medians after the start-up interval, from alternating runs, against the baseline."""
import importlib.util
import subprocess
import sys
from pathlib import Path

from fairseq_runs import write_toy_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
TINY = ("--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 16 --decoder-embed-dim 16 "
        "--encoder-ffn-embed-dim 32 --decoder-ffn-embed-dim 32 --encoder-attention-heads 2 "
        "--decoder-attention-heads 2 --share-all-embeddings --dropout 0.3")


def test_the_throughput_table_compares_rdrop_with_the_baseline_at_twice_its_batch(tmp_path):
    write_toy_corpus(tmp_path / "raw")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "raw"), "--work-dir", str(tmp_path / "work"),
         "--max-tokens", "128", "--updates", "3", "--rounds", "1", "--log-interval", "1", "--bpe-merges", "20",
         "--model", TINY, "--extra=--cpu"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| run"))}
    assert set(rows) == {"baseline", "rdrop"}
    (base_tokens, base_wps, base_model, _, base_ratio), (tokens, wps, model, _, _) = rows["baseline"], rows["rdrop"]
    assert (base_tokens, tokens, base_ratio) == ("256", "128", "1.000")
    assert base_model == base_wps and abs(int(model) - 2 * int(wps)) <= 1  # R-Drop's tokens go through twice
    assert int(wps) > 0


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_first_interval_is_left_out_and_the_ratios_are_to_the_baseline(tmp_path, monkeypatch, capsys):
    throughput = load_benchmark()
    intervals = [{"wps": 10.0, "ups": 0.1}, {"wps": 1000.0, "ups": 4.0}, {"wps": 6000.0, "ups": 2.0},
                 {"wps": 2000.0, "ups": 1.0}]  # the first holds the start-up
    monkeypatch.setattr(throughput.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0))
    monkeypatch.setattr(throughput, "read_log", lambda log: {"train_inner": intervals})
    args = throughput.build_parser().parse_args([])
    assert throughput.train(tmp_path, 5.0, 1024, args, tmp_path / "run.log") == (2000.0, 0.5)

    runs = []
    seconds = {"baseline": [0.4, 0.6], "rdrop": [0.2, 0.4]}  # s/update by round

    def train(bin_dir, alpha, max_tokens, args, log):
        name = "rdrop" if alpha else "baseline"
        runs.append(name)
        return 1000.0 * (2 if alpha else 3), seconds[name][runs.count(name) - 1]

    monkeypatch.setattr(throughput, "prepare_parallel", lambda *args, **kwargs: tmp_path)
    monkeypatch.setattr(throughput, "train", train)
    throughput.main(["--max-tokens", "512", "--rounds", "2"])
    assert runs == ["baseline", "rdrop", "rdrop", "baseline"]  # alternating, so that drift hits both alike
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| baseline | 1024 | 3000 | 3000 | 0.500 | 1.000 |", "| rdrop | 512 | 2000 | 4000 | 0.300 | 0.600 |"]
