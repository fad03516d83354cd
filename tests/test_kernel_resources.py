"""benchmarks/kernel_resources.py: the fused kernels compile for A100 and H100/H200 GPUs without one
(the interpreter, which runs them everywhere else in CI, never compiles them), and no launch spills."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Only the script imports Triton, in a process of its own: this one keeps the interpreter.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_resources.py"


def run_script(tmp_path, *args):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from an earlier run
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_every_launch_compiles_for_sm80_and_sm90_without_spilling(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = run_script(tmp_path, "--arch", "80", "90", "--copies", "2", "3", "--vocab", "1000", "10008",
                      "--json", str(rows_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    launches = {(row["kernel"], row["arch"], row["dtype"], row["copies"], row["vocab"]) for row in rows}
    assert len(launches) == len(rows) == 3 * 2 * 3 * 2 * 2  # forward, backward and the capped KL's kernel
    assert {row["block"] for row in rows} == {1024, 4096, 2048} and {row["warps"] for row in rows} == {4, 8}
    assert not [row for row in rows if row["stack_bytes"] and row["kernel"] != "capped_kl"]
    # the capped KL's kernel reads its scores only for tokens that hold -inf: a spill outside its loop is
    # a few accesses per such token
    assert not [row for row in rows if row["stack_ops_in_loops"]]
    assert all(0 < row["registers"] <= 255 for row in rows)
    table = [line for line in proc.stdout.splitlines() if line.startswith(("| forward", "| backward", "| capped_kl"))]
    assert len(table) == len(rows)


def test_five_to_eight_copies_get_a_block_that_does_not_spill_in_the_loop(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = run_script(tmp_path, "--arch", "90", "--dtype", "bf16", "--copies", "8", "--vocab", "32000",
                      "--json", str(rows_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert len(rows) == 3 and {row["block"] for row in rows} == {512}
    assert not [row for row in rows if row["stack_bytes"]], rows


def test_every_route_compiles(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = run_script(tmp_path, "--all-routes", "--dtype", "bf16", "--copies", "3", "--vocab", "10008",
                      "--json", str(rows_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    # the capped KL's kernel runs on the two routes from logits with the KL
    assert len({(row["kernel"], row["route"]) for row in rows}) == len(rows) == 2 * 8 + 2
    assert not [row for row in rows if row["stack_bytes"]]


def test_refuses_the_interpreter_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode != 0 and "unset TRITON_INTERPRET" in proc.stderr


def test_a_launch_that_spills_is_seen(tmp_path):
    # 4 copies of an 8k block are 128 fp32 scores per thread, and their KL temporaries: more than registers hold
    rows_file = tmp_path / "rows.json"
    proc = run_script(tmp_path, "--arch", "90", "--dtype", "fp32", "--copies", "4", "--vocab", "32000",
                      "--block", "8192", "--json", str(rows_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    passes = [row for row in rows if row["kernel"] in ("forward", "backward")]
    assert [row["block"] for row in rows] == [8192] * 3 and len(passes) == 2
    assert all(row["stack_bytes"] > 0 and row["stack_ops_in_loops"] > 0 for row in passes)


# As cuobjdump -sass prints a kernel whose two spilled values are stored before the loop over the
# vocabulary and loaded after it, with one more load in the loop (Triton 3.6's m = 3, V = 1,000 forward
# launch has the first two and not the third).
SASS = """
        /*0300*/                   IMAD.MOV.U32 R2, RZ, RZ, R12 ;
        /*0310*/                   STL [R1+0x4], R2 ;
        /*0370*/                   STL [R1], R2 ;
        /*0720*/                   FADD R16, RZ, R16 ;
        /*0800*/                   LDL.64 R22, [R1] ;
        /*38e0*/              @!P2 BRA 0x720 ;
        /*38f0*/                   LDL.LU R20, [R1+0x4] ;
        /*4750*/                   EXIT ;
        /*4760*/                   BRA 0x4760;
"""


def test_counts_the_stack_ops_inside_loops_only(tmp_path):
    code = "import sys; sys.path.insert(0, 'benchmarks'); import kernel_resources; " \
           f"print(kernel_resources.local_memory_ops_in_loops({SASS!r}))"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1"]
