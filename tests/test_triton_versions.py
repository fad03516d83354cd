"""benchmarks/triton_versions.sh on the Triton installed here (its folder is marked installed, and left
empty so that this Triton is the one imported): a row per version with the kernel tests and the compile,
a folder that imports another Triton is labelled so, and a release pip cannot install leaves nothing."""
import importlib.metadata
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_versions.sh"
OLD_NUMPY = "2.3.5"

# pip fails half-way, after it made its --target folder; everything else is this interpreter.
PYTHON_WITHOUT_PIP = f'''#!/usr/bin/env bash
if [[ "$1 $2" == "-m pip" ]]; then
    while [[ $# -gt 0 && $1 != --target ]]; do shift; done
    mkdir -p "$2/triton" && echo "ERROR: No matching distribution found" >&2 && exit 1
fi
exec {sys.executable} "$@"
'''


def test_a_row_per_version_with_tests_and_compile_and_nothing_half_installed(tmp_path):
    installed = importlib.metadata.version("triton")
    for folder in (f"triton-{installed}", "triton-0.0.1", f"numpy-{OLD_NUMPY}"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / ".installed").touch()
    python = tmp_path / "python"
    python.write_text(PYTHON_WITHOUT_PIP)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(PYTHON=str(python), TRITON_VERSIONS_DIR=str(tmp_path), OLD_NUMPY=OLD_NUMPY, ARCH="90",
               PYTEST_ARGS="tests/test_rdrop_loss_triton.py -k padded",
               RESOURCE_ARGS="--dtype bf16 --copies 2 --vocab 1000")
    proc = subprocess.run(["bash", str(SCRIPT), installed, "0.0.1", "9.9.9"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| Triton")}

    tests_now, tests_old, compiled, registers, spills = rows[installed]
    assert re.fullmatch(r"1 passed, \d+ deselected", tests_now) and tests_old == tests_now
    assert compiled == "yes, 3 launches" and int(registers) > 0 and spills == "0"  # forward, backward, capped KL
    assert f"0.0.1 (imports {installed})" in rows
    assert rows["9.9.9"][0] == "not installed"
    assert "could not install triton==9.9.9" in proc.stderr
    assert not any(path.name.startswith("triton-9.9.9") for path in tmp_path.iterdir())
