"""The fused loss kernels compiled for CUDA GPUs on any machine, GPU or not: what each launch needs.

Triton compiles for a named target without the device (``--arch 90``: H100/H200, ``80``: A100,
``89``: L4/L40), with the ptxas it ships.  Each launch is compiled as ``rdrop_loss_triton`` makes it:
its block size and warps for the vocabulary and number of copies, and the argument types and
16-divisibility that interleaved (copies x 128, 32, V) scores give; by default on the criteria's
route (from the logits, with targets, padding index 1 and the KL term), with ``--all-routes`` on the
other seven combinations of targets, logits and KL too.  Not modelled: the one-position layouts of
``rdrop_sentence_prediction`` and of ``rdrop_adaptive_loss``'s KL, and unaligned views
(``--ignore-prefix-size``), which Triton specialises differently.
For each it prints the registers per thread, the stack bytes per thread (where ptxas puts spilled
registers, which cost a memory-bound kernel its speed), how many of the SASS's stack loads and stores
sit inside a loop (where they cost every block of the vocabulary, not once per token) and the shared
memory it asks for.  It
says nothing about time: that is ``benchmarks/step_cost.py`` and ``benchmarks/loss_kernel.py`` on a GPU.

    python benchmarks/kernel_resources.py
    python benchmarks/kernel_resources.py --arch 80 90 --dtype bf16 --copies 2 3 4 --vocab 32000
    python benchmarks/kernel_resources.py --all-routes --json resources.json   # the rows, for a script
"""
import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("error: kernel_resources.py compiles the kernels, which Triton's interpreter does not: unset TRITON_INTERPRET")
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:
    sys.exit(f"error: kernel_resources.py needs Triton ({error}); pip install -e '.[triton]'")

from rdrop_fairseq.rdrop_loss import MIN_TRITON, version_numbers  # noqa: E402

if version_numbers(triton.__version__) < MIN_TRITON:  # ASTSource took other arguments before
    sys.exit(f"error: kernel_resources.py needs Triton >= {'.'.join(map(str, MIN_TRITON))}, "
             f"as the kernels do; this is Triton {triton.__version__}")
# Without CUDA the kernels module would choose the interpreter; here nothing is launched.
with mock.patch("torch.cuda.is_available", return_value=True):
    from rdrop_fairseq.kernels import rdrop_loss_triton as kernels  # noqa: E402

GROUPS, LENGTH = 128, 32  # one benchmark batch per copy: 4,096 target tokens
TRITON_TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def launch_arguments(copies, vocab, dtype):
    """Each kernel's non-constexpr arguments as a launch on interleaved scores passes them."""
    stride_pos, stride_copy = vocab, LENGTH * vocab
    scalars = dict(num_tokens=GROUPS * LENGTH, length=LENGTH, stride_group=copies * stride_copy,
                   stride_copy=stride_copy, stride_pos=stride_pos, vocab=vocab, ignore_index=1,
                   kl_weight=5.0 / (copies * (copies - 1)), eps_other=0.1 / (vocab - 1), eps_target=0.9)
    scalars.update({f"grad_{name}": scalars[name] for name in ("stride_group", "stride_copy", "stride_pos")})
    pointers = dict(scores_ptr=TRITON_TYPES[dtype], grad_ptr=TRITON_TYPES[dtype], target_ptr="i64")
    return scalars, pointers


def signature_of(kernel, constexprs, scalars, pointers):
    """Types and divisibility hints as Triton's launcher derives them from the values; ints equal to 1
    join ``constexprs``."""
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            signature[name] = "*" + pointers.get(name, "fp32")
            divisible = True  # the caching allocator's tensors start 16-byte aligned
        elif isinstance(scalars[name], float):
            signature[name], divisible = "fp32", False
        elif scalars[name] == 1:  # the launcher makes an int argument equal to 1 a constant
            signature[name] = "constexpr"
            constexprs[name] = 1
            continue
        else:
            signature[name] = "i32" if -2**31 <= scalars[name] < 2**31 else "i64"
            divisible = scalars[name] % 16 == 0
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def cuobjdump(cubin, *options):
    """The output of the cuobjdump that Triton ships, run on ``cubin``."""
    tool = getattr(getattr(getattr(triton, "knobs", None), "nvidia", None), "cuobjdump", None)
    path = getattr(tool, "path", None) or str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run([path, *options, handle.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin, name):
    """Registers and the stack and local bytes (where ptxas puts what it spills) per thread in the cubin."""
    text = cuobjdump(cubin, "-res-usage")
    found = re.search(rf"Function {re.escape(name)}:\s*REG:(\d+)\s+STACK:(\d+).*?LOCAL:(\d+)", text)
    if not found:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{text}")
    registers, stack, local = map(int, found.groups())
    return registers, stack + local


SASS_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def local_memory_ops_in_loops(sass):
    """How many stack or local-memory loads and stores (STL, LDL) in the SASS sit inside a loop, that is,
    between a backward branch and its target: a spill outside the loops over the vocabulary costs a few
    cached accesses per token, one inside them costs every block."""
    local_ops, loops = [], []
    for address, instruction in SASS_INSTRUCTION.findall(sass):
        address = int(address, 16)
        branch = re.search(r"\bBRA\s+(0x[0-9a-f]+)", instruction)
        if branch and int(branch.group(1), 16) < address:
            loops.append((int(branch.group(1), 16), address))
        if re.search(r"\b(STL|LDL)\b", instruction):
            local_ops.append(address)
    return sum(any(first <= address <= last for first, last in loops) for address in local_ops)


def compile_launch(kernel, arch, dtype, copies, vocab, block_size=0, variant=(True, True, True)):
    copies_pad, block, num_warps = kernels._launch_config(vocab, copies, block_size)
    has_target, from_logits, with_kl = variant
    constexprs = dict(COPIES=copies, COPIES_PAD=copies_pad, BLOCK=block, HAS_TARGET=has_target,
                      FROM_LOGITS=from_logits, WITH_KL=with_kl)
    constexprs = {name: value for name, value in constexprs.items() if name in kernel.arg_names}
    signature, attrs = signature_of(kernel, constexprs, *launch_arguments(copies, vocab, dtype))
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    registers, stack = resource_usage(compiled.asm["cubin"], kernel.__name__)
    in_loops = local_memory_ops_in_loops(cuobjdump(compiled.asm["cubin"], "-sass")) if stack else 0
    route = "+".join(name for name, on in zip(("target", "logits", "kl"), variant) if on) or "-"
    return dict(kernel=kernel.__name__.strip("_").replace("rdrop_", "").replace("_kernel", ""), route=route,
                arch=f"sm_{arch}", dtype=dtype, copies=copies, vocab=vocab, block=block, warps=num_warps,
                registers=registers, stack_bytes=stack, stack_ops_in_loops=in_loops,
                shared_bytes=compiled.metadata.shared)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="CUDA compute capabilities, e.g. 80 90")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16", "fp32"], choices=sorted(TRITON_TYPES))
    parser.add_argument("--copies", type=int, nargs="+", default=[2, 3])
    # V sets BLOCK and warps, and whether Triton may assume rows 16-aligned (fairseq pads dictionaries to 8)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1_000, 10_008, 32_000])
    parser.add_argument("--block", type=int, default=0,
                        help="a block of vocabulary entries in place of the kernels' own choice (a power of 2)")
    parser.add_argument("--all-routes", action="store_true",
                        help="also the other routes: with or without targets, from logits or log-probabilities, "
                             "with or without the KL (on the same layout)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = parser.parse_args(argv)
    if min(args.copies) < 2 or min(args.vocab) < 2:
        parser.error("--copies and --vocab take values of 2 or more")
    if args.block and args.block & (args.block - 1):
        parser.error(f"--block {args.block} is not a power of 2")
    routes = list(itertools.product((True, False), repeat=3)) if args.all_routes else [(True, True, True)]
    # the capped-KL kernel runs on the route from logits with the KL only, and reads its scores only for
    # tokens that hold -inf
    launched = [(kernel, route) for kernel in (kernels._rdrop_forward_kernel, kernels._rdrop_backward_kernel,
                                               kernels._rdrop_capped_kl_kernel)
                for route in routes if kernel is not kernels._rdrop_capped_kl_kernel or route[1:] == (True, True)]
    rows = [compile_launch(kernel, arch, dtype, copies, vocab, args.block, route)
            for arch in args.arch for kernel, route in launched
            for dtype in args.dtype for copies in args.copies for vocab in args.vocab]
    print(f"## fused loss kernels, compiled by Triton {triton.__version__}")
    print("| kernel | route | arch | dtype | copies | V | BLOCK | warps | registers | stack bytes "
          "| stack ops in loops | shared bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
