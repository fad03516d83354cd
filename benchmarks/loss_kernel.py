"""The loss alone: forward + backward from the logits, R-Drop against the doubled batch's loss.

For ``copies * N`` rows of logits it times, side by side in one process:

  doubled   fairseq's label-smoothed NLL over log_softmax(logits.float()), the stock
            criterion's loss on the doubled batch (R-Drop's floor, minus the KL); with
            ``--copies M``, on the batch M times
  torch     rdrop_loss_from_logits with RDROP_KERNEL=torch (the chunked Function)
  triton    rdrop_loss_from_logits with RDROP_KERNEL=triton (the fused kernels)

and prints the median milliseconds and the ratios to ``doubled``, with the bytes that
one read of the logits moves and the fused kernels' GB/s (two reads of the logits and one
write of their gradient over the time), to set against the memory bandwidth.  ``--blocks``
times the fused kernels at other block sizes too, to tune their choice on a GPU, beside
``triton_own``: their own choice called the same way (the Function alone, without the
target check of ``rdrop_loss_from_logits``, which the ``triton`` column includes).

    python benchmarks/loss_kernel.py --dtype bf16          # CUDA
    python benchmarks/loss_kernel.py --blocks 1024 2048 8192
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdrop_fairseq.rdrop_loss import rdrop_loss_from_logits  # noqa: E402

SHAPES = {"iwslt": (4096, 10_000), "wmt": (4096, 32_000), "wmt_8k": (8192, 32_000), "lm": (256, 267_744)}
PAD = 1


def copies_of(logits, target):
    """The copies in ``logits``: ``copies * N`` rows, copy-major, for ``N`` targets."""
    return logits.size(0) // target.size(0)


def doubled(logits, target, epsilon):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    lprobs = F.log_softmax(logits.float(), -1)
    return label_smoothed_nll_loss(lprobs, target.repeat(copies_of(logits, target)), epsilon, ignore_index=PAD)[0]


def plugin(kernel):
    def loss(logits, target, epsilon):
        os.environ["RDROP_KERNEL"] = kernel
        return rdrop_loss_from_logits(logits, target, copies_of(logits, target), 5.0, epsilon, PAD)[0]
    return loss


def fixed_block(block):
    """The fused kernels with ``block`` vocabulary entries per step in place of their own choice."""
    from rdrop_fairseq.kernels.rdrop_loss_triton import TritonRDropLossFunction

    def loss(logits, target, epsilon):
        return TritonRDropLossFunction.apply(logits, target, copies_of(logits, target), 5.0, epsilon, PAD, True,
                                             block)[0]
    return loss


def timed(fn, logits, target, epsilon, repeats, device):
    times = []
    for i in range(repeats + 2):
        leaf = logits.detach().requires_grad_()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(leaf, target, epsilon).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def modes_for(device, blocks=()):
    modes = {"doubled": doubled, "torch": plugin("torch")}
    if device == "cuda":
        modes["triton"] = plugin("triton")
        if blocks:
            modes["triton_own"] = fixed_block(0)
        modes.update({f"triton_b{block}": fixed_block(block) for block in blocks})
    return modes


def header(modes):
    fused = [name for name in modes if name.startswith("triton")]
    columns = ["shape", "copies", "tokens per copy", "V", "logits (MB)", *(f"{name} (ms)" for name in modes),
               *(f"{name} / doubled" for name in modes if name != "doubled"), *(f"{name} GB/s" for name in fused)]
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def measure(shape, tokens, vocab, modes, dtype, device, repeats, copies=2):
    """One table row: every mode timed on the same logits, in two interleaved rounds (the best median
    of each)."""
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(copies * tokens, vocab, generator=gen, device=device).mul_(3).to(dtype)
    target = torch.randint(2, vocab, (tokens,), generator=gen, device=device)
    target[::17] = PAD
    results = {}
    for _ in range(2):
        for name, fn in modes.items():
            results[name] = min(results.get(name, float("inf")), timed(fn, logits, target, 0.1, repeats, device))
    logits_bytes = logits.numel() * logits.element_size()
    cells = [shape, copies, tokens, vocab, f"{logits_bytes / 1e6:.0f}", *(f"{t * 1e3:.3f}" for t in results.values()),
             *(f"{t / results['doubled']:.2f}" for name, t in results.items() if name != "doubled"),
             # the fused kernels read the logits in forward and in backward, and write their gradient once
             *(f"{3 * logits_bytes / t / 1e9:.0f}" for name, t in results.items() if name.startswith("triton"))]
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--copies", type=int, nargs="+", default=[2], metavar="M",
                        help="sub-models; doubled is then the stock loss on the batch M times (default: 2)")
    parser.add_argument("--blocks", type=int, nargs="*", default=[], metavar="N",
                        help="also time the fused kernels with N vocabulary entries per block (powers of 2), "
                             "against their own choice (CUDA)")
    args = parser.parse_args(argv)
    bad = [block for block in args.blocks if block < 16 or block & (block - 1)]
    if bad:
        parser.error(f"--blocks takes powers of 2 from 16, not {bad}")
    if min(args.copies) < 2:
        parser.error(f"--copies takes numbers of sub-models from 2, not {[m for m in args.copies if m < 2]}")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    modes = modes_for(args.device, args.blocks)
    print(header(modes))
    for copies in args.copies:
        for shape in SHAPES if args.shape == "all" else [args.shape]:
            print(measure(shape, *SHAPES[shape], modes, dtype, args.device, args.repeats, copies), flush=True)


if __name__ == "__main__":
    main()
