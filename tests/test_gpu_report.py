"""benchmarks/gpu-report.sh with stand-ins for the GPU's interpreter and nvidia-smi: the tables of
every benchmark are collected, and a benchmark that fails is shown with its error while the report goes on."""
import os
import tarfile
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu-report.sh"

FAKE_PYTHON = r'''#!/usr/bin/env bash
# Answers as a CUDA machine's python would, for what gpu-report.sh asks of it.
# The interpreter would time Triton's interpreter, not the GPU's kernels:
[[ -n ${TRITON_INTERPRET:-} ]] && { echo "TRITON_INTERPRET reached $*" >&2; exit 5; }
case "$1" in
    -c) case $2 in
            *cuda.is_available*) exit 0 ;;
            *get_device_capability*) echo 90 ;;
            *get_device_name*) echo "Fake GPU (no nvidia-smi)" ;;
            *triton*) [[ -n ${NO_TRITON:-} ]] && { echo "ModuleNotFoundError: No module named 'triton'" >&2; exit 1; }
                echo "torch 9.9 triton 9.9" ;;
            *) echo "unexpected: $*" >&2; exit 9 ;;
        esac ;;
    -m) # pytest.ini's worker processes need pytest-xdist, which the device machine may lack
        [[ " $* " == *" -o addopts= "* ]] || { echo "pytest would read pytest.ini's addopts: $*" >&2; exit 7; }
        [[ -n ${FAIL_TESTS:-} ]] && { echo "1 failed, 2 passed in 1.0s"; exit 1; }; echo "3 passed in 1.0s" ;;
    benchmarks/step_cost.py)
        shape=$3 dtype=$7
        [[ "${*:2}" == "--shape $shape --device cuda --dtype $dtype --repeats ${REPEATS:-10}" && $dtype =~ ^(bf|fp)16$ ]] ||
            { echo "args: $*" >&2; exit 8; }
        echo "$shape $dtype" >>"${STEP_CALLS:-/dev/null}"
        echo "noise before the table"
        [[ $shape == "$FAIL_SHAPE" ]] && { echo "Traceback: RuntimeError: CUDA out of memory" >&2; exit 3; }
        [[ $shape == "$SLOW_SHAPE" ]] && { [[ -n ${SLOW_STARTED:-} ]] && touch "$SLOW_STARTED"; exec sleep 60; }
        echo "## $shape: step cost"
        echo "| doubled | 1.0 | 1.000 |" ;;
    benchmarks/loss_kernel.py)
        if [[ $2 == --shape ]]; then  # the copies sweep
            [[ "${*:2}" == "--shape wmt --dtype bf16 --repeats 5 --copies 3 4 5 6 7 8" ]] || { echo "args: $*" >&2; exit 8; }
            echo "## copies"; echo "| wmt | 8 | 0.3 |"; exit 0
        fi
        [[ "${*:4}" == "--blocks 1024 2048 8192" ]] || { echo "args: $*" >&2; exit 8; }
        echo "## loss $3"; echo "| fused | 0.2 |" ;;
    benchmarks/kernel_resources.py) echo "## kernels $*"; echo "| forward | sm_$3 | 0 |" ;;
    benchmarks/train_throughput.py)  # the real parser reads the arguments the report passes
        "$REAL_PYTHON" -c 'import sys; sys.path.insert(0, "benchmarks"); import train_throughput
print("parsed", vars(train_throughput.build_parser().parse_args(sys.argv[1:])))' "${@:2}" || exit
        echo "| rdrop | 4096 | 1000 |" ;;
    *) echo "unexpected: $*" >&2; exit 9 ;;
esac
'''


def run_report(tmp_path, script=SCRIPT, **env):
    command, env, out = report_command(tmp_path, script, **env)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env), out


def report_command(tmp_path, script=SCRIPT, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    nvidia_smi = ("#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch'; exit 18\n"
                  if env.pop("NVIDIA_SMI_FAILS", None) else "#!/bin/sh\necho 'Fake GPU, 1.0'\n")
    tools = [("python", FAKE_PYTHON)] + ([] if env.pop("NO_NVIDIA_SMI", None) else [("nvidia-smi", nvidia_smi)])
    for name, text in tools:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    out = tmp_path / "report"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "THROUGHPUT_UPDATES": "0", "BF16_SHAPES": "iwslt wmt", "FP16_SHAPES": "wmt_full",
           "REAL_PYTHON": sys.executable, **env}
    return ["bash", str(script), str(out)], {name: value for name, value in env.items() if value is not None}, out


def test_the_tables_of_every_benchmark_are_kept(tmp_path):
    calls = tmp_path / "step-cost-calls"
    proc, out = run_report(tmp_path, STEP_CALLS=str(calls))
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == ["iwslt bf16", "wmt bf16", "wmt_full fp16"]
    bf16 = (out / "step-cost-bf16.md").read_text().splitlines()
    assert bf16 == ["## iwslt: step cost", "| doubled | 1.0 | 1.000 |", "## wmt: step cost", "| doubled | 1.0 | 1.000 |"]
    assert (out / "step-cost-fp16.md").read_text().startswith("## wmt_full")
    assert (out / "loss-kernel-fp16.md").read_text() == "## loss fp16\n| fused | 0.2 |\n"
    assert (out / "kernel-resources.md").read_text().splitlines()[1] == "| forward | sm_90 | 0 |"
    assert "## kernels" in (out / "kernel-resources.log").read_text()
    assert "noise before the table" in (out / "step-cost-bf16.log").read_text()
    proc, out = run_report(tmp_path)  # a second run into the same folder keeps only its own tables
    assert (out / "step-cost-bf16.md").read_text().count("## iwslt") == 1


def test_a_failing_benchmark_is_shown_and_the_others_still_run(tmp_path):
    # one device run has to bring back every figure it can: a shape out of memory costs only its own
    proc, out = run_report(tmp_path, FAIL_SHAPE="wmt")
    assert proc.returncode == 3
    assert "step_cost.py --shape wmt" in proc.stderr and "CUDA out of memory" in proc.stderr
    assert (out / "step-cost-bf16.md").read_text().splitlines() == ["## iwslt: step cost", "| doubled | 1.0 | 1.000 |"]
    assert (out / "loss-kernel-bf16.md").read_text() == "## loss bf16\n| fused | 0.2 |\n"
    assert (out / "step-cost-fp16.md").read_text().startswith("## wmt_full")


def test_throughput_gets_arguments_its_parser_takes_or_is_skipped_without_a_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.de").write_text("hallo\n")
    proc, out = run_report(tmp_path, THROUGHPUT_UPDATES="5", CORPUS=str(corpus))
    assert proc.returncode == 0, proc.stderr
    log = (out / "train-throughput.log").read_text()
    assert "'extra': '--fp16'" in log and "'updates': 5" in log and f"'corpus': PosixPath('{corpus}')" in log
    assert (out / "train-throughput.md").read_text() == "| rdrop | 4096 | 1000 |\n"
    proc, out = run_report(tmp_path, THROUGHPUT_UPDATES="5", CORPUS=str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "throughput skipped" in proc.stderr
    assert (out / "step-cost-fp16.md").read_text().startswith("## wmt_full")


def test_throughput_finds_the_corpus_a_device_run_carries_into_the_checkout(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    for name in ("gpu-report.sh", "train_throughput.py"):
        shutil.copy(SCRIPT.parent / name, checkout / "benchmarks" / name)
    (checkout / ".corpus" / "lohelp-de-en").mkdir(parents=True)
    (checkout / ".corpus" / "lohelp-de-en" / "train.de").write_text("hallo\n")
    proc, out = run_report(tmp_path, script=checkout / "benchmarks" / "gpu-report.sh", THROUGHPUT_UPDATES="5",
                           CORPUS="")  # unset
    assert proc.returncode == 0, proc.stderr
    assert "'corpus': PosixPath('.corpus/lohelp-de-en')" in (out / "train-throughput.log").read_text()


def test_without_a_working_nvidia_smi_or_triton_the_report_still_runs(tmp_path):
    proc, out = run_report(tmp_path, NO_NVIDIA_SMI="1")
    assert proc.returncode == 0, proc.stderr
    assert "(no nvidia-smi)" in (out / "device.txt").read_text()
    # a container's nvidia-smi can fail (NVML version mismatch) where CUDA works: that must not end the report
    proc, out = run_report(tmp_path, NVIDIA_SMI_FAILS="1", NO_TRITON="1")  # nor does a Triton that fails to import
    assert proc.returncode == 0, proc.stderr
    assert "(no nvidia-smi)" in (out / "device.txt").read_text() and "cannot import" in proc.stderr
    assert (out / "step-cost-fp16.md").read_text().startswith("## wmt_full")


def test_a_failing_test_warns_and_the_timings_are_still_made(tmp_path):
    proc, out = run_report(tmp_path, FAIL_TESTS="1")
    assert proc.returncode == 1, proc.stderr  # the status of the last failure
    assert "warning:" in proc.stderr and "1 failed" in (out / "kernel-tests.txt").read_text()
    assert "1 failed" in (out / "checkpoint-tests.txt").read_text()
    assert (out / "step-cost-fp16.md").read_text().startswith("## wmt_full")


def test_the_tables_so_far_come_back_as_two_files_also_when_the_time_limit_strikes(tmp_path):
    # a device machine brings back a few files from $OUT: the report's are two, refreshed after every section
    bundle = tmp_path / "OUT"
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "train-throughput.md").write_text("| STALE |\n")  # an earlier report's: not gathered
    proc, out = run_report(tmp_path, OUT=str(bundle), TRITON_INTERPRET="1")  # unset by the script
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in bundle.iterdir()) == ["gpu-report.md", "gpu-report.tar.gz"]
    report = (bundle / "gpu-report.md").read_text()
    order = ["### device.txt", "### kernel-tests.txt", "### kernel-resources.md", "### checkpoint-tests.txt",
             "### step-cost-bf16.md", "### step-cost-fp16.md", "### loss-kernel-bf16.md", "### loss-kernel-fp16.md"]
    assert [report.index(heading) for heading in order] == sorted(report.index(heading) for heading in order)
    assert "| doubled | 1.0 | 1.000 |" in report and "## loss fp16" in report and "STALE" not in report
    assert report.index("### loss-kernel-fp16.md") < report.index("### loss-kernel-copies.md\n\n## copies\n| wmt | 8 |")
    with tarfile.open(bundle / "gpu-report.tar.gz") as tar:
        assert "report/step-cost-bf16.log" in tar.getnames()

    # a shape that hangs is stopped at LIMIT_S, the sections after it are skipped, and what came before is kept
    proc, out = run_report(tmp_path, OUT=str(bundle), SLOW_SHAPE="wmt", LIMIT_S="21")
    assert proc.returncode == 124
    assert "LIMIT_S=21 s is nearly spent" in proc.stderr
    report = (bundle / "gpu-report.md").read_text()
    assert "## iwslt: step cost" in report and "## wmt: step cost" not in report
    assert "## loss bf16" not in report and "### step-cost-fp16.md" not in report  # skipped: no empty sections
    assert "skipped: LIMIT_S=21 s was nearly spent" in (out / "step-cost-fp16.log").read_text()


def test_the_tables_so_far_come_back_when_the_machine_kills_the_report_mid_shape(tmp_path):
    # without LIMIT_S (or with one too long) the device machine's own limit ends the report at once: every
    # shape's table must already be gathered by then
    bundle, started = tmp_path / "OUT", tmp_path / "slow-shape-started"
    command, env, out = report_command(tmp_path, OUT=str(bundle), SLOW_SHAPE="wmt", SLOW_STARTED=str(started),
                                       REPEATS="3")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(300):
            if started.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    report = (bundle / "gpu-report.md").read_text()
    assert "### step-cost-bf16.md\n\n## iwslt: step cost\n| doubled |" in report and "## wmt" not in report
    with tarfile.open(bundle / "gpu-report.tar.gz") as tar:
        assert "report/step-cost-bf16.log" in tar.getnames()


def test_by_default_every_shape_of_the_speed_goal_is_timed_in_bf16_and_fp16_before_the_other_benchmarks(tmp_path):
    calls, bundle = tmp_path / "step-cost-calls", tmp_path / "OUT"
    proc, out = run_report(tmp_path, STEP_CALLS=str(calls), OUT=str(bundle), BF16_SHAPES=None, FP16_SHAPES=None)
    assert proc.returncode == 0, proc.stderr
    shapes = ["iwslt", "iwslt_full", "wmt", "wmt_full", "lm"]
    assert calls.read_text().splitlines() == [f"{shape} bf16" for shape in shapes] + [f"{shape} fp16" for shape in shapes]
    # under a time limit the goal's tables come first: the loss alone and the rest after them
    report = (bundle / "gpu-report.md").read_text()
    assert report.index("### step-cost-bf16.md") < report.index("### step-cost-fp16.md") < report.index("### loss-kernel")
