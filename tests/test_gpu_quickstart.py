"""benchmarks/gpu-quickstart.sh with a stand-in for scripts/quickstart.sh: the quickstart gets options its
parser takes, and the report comes back whether it finished, failed or was cut off by the time limit."""
import os
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu-quickstart.sh"

# Parses its arguments with the real quickstart parser, writes what the real one would, in the order it
# would (R-Drop, then the baseline, then the results), and stops where STOP_AFTER says.
FAKE_QUICKSTART = r'''#!/usr/bin/env bash
set -euo pipefail
[[ -n ${SKIP_PARSE:-} ]] || "$PYTHON" -c 'import sys; from rdrop_fairseq.recipes.quickstart import build_parser
print("parsed", vars(build_parser().parse_args(sys.argv[1:])))' "$@"
while (($#)); do [[ $1 == --out-dir ]] && out=$2; shift; done
mkdir -p "$out/rdrop" "$out/baseline"
echo '{"epoch": 1}' > "$out/rdrop/train.log"; echo "checkpoint" > "$out/rdrop/checkpoint_last.pt"
[[ ${STOP_AFTER:-} == rdrop-fails ]] && { echo "Traceback: CUDA error" >&2; exit 3; }
[[ ${STOP_AFTER:-} == rdrop ]] && sleep 30
echo '{"epoch": 1}' > "$out/baseline/train.log"
printf '| run | BLEU |\n' > "$out/results.md"; echo '{}' > "$out/results.json"; echo png > "$out/curves.png"
echo "done"
'''


def run(tmp_path, *args, **env):
    fake = tmp_path / "quickstart.sh"
    fake.write_text(FAKE_QUICKSTART)
    fake.chmod(stat.S_IRWXU)
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "train.de").write_text("Hallo\n")
    out = tmp_path / "report"
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "QUICKSTART": str(fake), "PYTHON": sys.executable, "CORPUS": str(corpus),
             "RUN_DIR": str(tmp_path / "runs"), "WORK_DIR": str(tmp_path / "work"), "OUT_DIR": str(out), **env})
    return proc, out


def test_a_finished_quickstart_brings_back_its_table_curves_and_logs(tmp_path):
    proc, out = run(tmp_path, "--max-updates", "2000")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "baseline-train.log", "curves.png", "device.txt", "quickstart.log", "rdrop-train.log",
        "results.json", "results.md"]  # no checkpoint: too large to bring back
    log = (out / "quickstart.log").read_text()
    assert "'max_updates': 2000" in log and f"'corpus': PosixPath('{tmp_path / 'corpus'}')" in log
    assert f"'out_dir': PosixPath('{tmp_path / 'runs'}')" in log and "done" in proc.stdout
    assert "'concurrent': True" in log  # both runs at once, by default


def test_concurrent_0_trains_one_run_after_the_other_and_anything_else_is_refused(tmp_path):
    proc, out = run(tmp_path, "--minutes", "8", CONCURRENT="0")
    assert proc.returncode == 0, proc.stderr
    log = (out / "quickstart.log").read_text()
    assert "'concurrent': False" in log and "'minutes': 8.0" in log
    proc, out = run(tmp_path, CONCURRENT="yes")
    assert proc.returncode == 2 and "CONCURRENT must be 1 or 0, got 'yes'" in proc.stderr


def test_a_run_cut_off_by_the_limit_still_brings_back_what_it_trained(tmp_path):
    proc, out = run(tmp_path, LIMIT_S="2", STOP_AFTER="rdrop", SKIP_PARSE="1")  # fairseq imports for seconds
    assert proc.returncode == 124
    assert "cut off after LIMIT_S=2 s" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["device.txt", "quickstart.log", "rdrop-train.log"]
    assert (tmp_path / "runs" / "rdrop" / "checkpoint_last.pt").is_file()  # kept for a second call


def test_a_failing_quickstart_is_shown_and_its_status_kept(tmp_path):
    proc, out = run(tmp_path, STOP_AFTER="rdrop-fails", SKIP_PARSE="1")
    assert proc.returncode == 3
    assert "quickstart failed (3)" in proc.stderr and "CUDA error" in proc.stdout
    assert (out / "rdrop-train.log").is_file() and not (out / "results.md").exists()


def test_a_missing_corpus_or_a_bad_limit_is_named_before_anything_runs(tmp_path):
    proc, out = run(tmp_path, CORPUS=str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and f"no corpus at CORPUS={tmp_path / 'nowhere'}" in proc.stderr
    proc, out = run(tmp_path, LIMIT_S="ten")
    assert proc.returncode == 2 and "LIMIT_S must be a positive number of seconds, got 'ten'" in proc.stderr
    assert not out.exists()
