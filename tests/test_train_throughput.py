"""benchmarks/train_throughput.py end to end on a toy corpus: both fairseq-train runs happen and its table
holds what the header says (a GPU run costs device time, so it must not be the first to find a break)."""
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
