#!/usr/bin/env bash
# usage: bash benchmarks/triton_versions.sh [TRITON_VERSION ...]   (default: 3.2.0 3.3.1 3.4.0 3.5.1 3.6.0 3.7.1 3.8.0)
#
# The fused loss kernels under each Triton release, on this machine: the kernel tests (under Triton's
# interpreter without CUDA) with this numpy and with numpy OLD_NUMPY, and the kernels compiled for ARCH by
# benchmarks/kernel_resources.py (the most registers a launch takes, how many launches have stack bytes, and how
# many of their stack loads and stores sit inside the loops over the vocabulary).
# This is how rdrop_loss.MIN_TRITON and MIN_TRITON_INTERPRETER_NUMPY_2_4 were found. Each release is
# installed once, with pip --target, into its own folder; nothing is installed into the environment.
#
# Environment: PYTHON (python3), TRITON_VERSIONS_DIR (~/.cache/rdrop_fairseq/triton-versions),
#   OLD_NUMPY (2.3.5), ARCH ("80 90"), PYTEST_ARGS (the kernel tests), RESOURCE_ARGS (more options of
#   kernel_resources.py). A folder holding a file .installed counts as installed.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
root=${TRITON_VERSIONS_DIR:-$HOME/.cache/rdrop_fairseq/triton-versions}
OLD_NUMPY=${OLD_NUMPY:-2.3.5}
ARCH=${ARCH:-80 90}
PYTEST_ARGS=${PYTEST_ARGS:-tests/test_rdrop_loss_triton.py tests/test_loss_kernel.py}
RESOURCE_ARGS=${RESOURCE_ARGS:-}
if [ $# -eq 0 ]; then
    set -- 3.2.0 3.3.1 3.4.0 3.5.1 3.6.0 3.7.1 3.8.0
fi
mkdir -p "$root/logs"

install() {  # install PACKAGE==VERSION into FOLDER, whole or not at all
    local spec=$1 folder=$2
    [ -e "$folder/.installed" ] && return 0
    rm -rf "$folder.partial"
    if ! "$PYTHON" -m pip install --quiet --no-deps --target "$folder.partial" "$spec" >"$root/logs/pip-$spec.log" 2>&1; then
        rm -rf "$folder.partial"
        echo "could not install $spec: see $root/logs/pip-$spec.log" >&2
        return 1
    fi
    touch "$folder.partial/.installed"
    rm -rf "$folder" && mv "$folder.partial" "$folder"
}

kernel_tests() {  # the pytest summary without its time, under PYTHONPATH $1; in one process (-o addopts=)
    local log=$2
    PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= $PYTEST_ARGS >"$log" 2>&1 || true
    tail -n 1 "$log" | sed -E 's/^=+ //; s/ in [0-9.]+s.*//'
}

numpy_now=$("$PYTHON" -c 'import numpy; print(numpy.__version__)')
old_numpy_dir="$root/numpy-$OLD_NUMPY"
install "numpy==$OLD_NUMPY" "$old_numpy_dir" || old_numpy_dir=

echo "## the fused kernels under each Triton release ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)'))"
echo "| Triton | kernel tests, numpy $numpy_now | kernel tests, numpy $OLD_NUMPY | compiled for sm_${ARCH// /, sm_} | most registers | launches with stack bytes (their stack ops in loops) |"
echo "|---|---|---|---|---|---|"
for version in "$@"; do
    folder="$root/triton-$version"
    if ! install "triton==$version" "$folder"; then
        echo "| $version | not installed | | | | |"
        continue
    fi
    imported=$(PYTHONPATH="$folder" "$PYTHON" -c 'import triton; print(triton.__version__)' 2>/dev/null || echo "none")
    label=$version
    [ "$imported" = "$version" ] || label="$version (imports $imported)"
    with_now=$(kernel_tests "$folder" "$root/logs/tests-$version-numpy-$numpy_now.log")
    with_old="-"
    [ -n "$old_numpy_dir" ] && with_old=$(kernel_tests "$folder:$old_numpy_dir" "$root/logs/tests-$version-numpy-$OLD_NUMPY.log")
    rows="$root/logs/resources-$version.json"
    rm -f "$rows"
    # shellcheck disable=SC2086  # ARCH and RESOURCE_ARGS are lists of options
    if env -u TRITON_INTERPRET PYTHONPATH="$folder" TRITON_CACHE_DIR="$root/cache-$version" \
        "$PYTHON" benchmarks/kernel_resources.py --arch $ARCH $RESOURCE_ARGS --json "$rows" \
        >"$root/logs/resources-$version.log" 2>&1; then
        summary=$("$PYTHON" -c '
import json, sys
rows = json.load(open(sys.argv[1]))
registers = max(row["registers"] for row in rows)
spills = sum(1 for row in rows if row["stack_bytes"])
in_loops = sum(row["stack_ops_in_loops"] for row in rows)
print(f"yes, {len(rows)} launches | {registers} | {spills}" + (f" ({in_loops} in loops)" if spills else ""))
' "$rows")
    else
        summary="no: $(tail -n 1 "$root/logs/resources-$version.log" | cut -c1-120 | tr '|' '/') | | "
    fi
    echo "| $label | $with_now | $with_old | $summary |"
done
echo
echo "logs: $root/logs"
