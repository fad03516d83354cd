"""The loss alone: forward + backward from the logits, R-Drop against the doubled batch's loss.

For ``copies * N`` rows of logits it times, side by side in one process:

  doubled   fairseq's label-smoothed NLL over log_softmax(logits.float()), the stock
            criterion's loss on the doubled batch (R-Drop's floor, minus the KL)
  torch     rdrop_loss_from_logits with RDROP_KERNEL=torch (the chunked Function)
  triton    rdrop_loss_from_logits with RDROP_KERNEL=triton (the fused kernels)

and prints the median milliseconds and the ratios to ``doubled``, with the bytes that
one read of the logits moves, so the times can be set against the memory bandwidth.

    python benchmarks/loss_kernel.py --dtype bf16          # CUDA
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


def doubled(logits, target, epsilon):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    lprobs = F.log_softmax(logits.float(), -1)
    return label_smoothed_nll_loss(lprobs, target.repeat(2), epsilon, ignore_index=PAD)[0]


def plugin(kernel):
    def loss(logits, target, epsilon):
        os.environ["RDROP_KERNEL"] = kernel
        return rdrop_loss_from_logits(logits, target, 2, 5.0, epsilon, PAD)[0]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    modes = {"doubled": doubled, "torch": plugin("torch")}
    if args.device == "cuda":
        modes["triton"] = plugin("triton")
    print(f"| shape | tokens per copy | V | logits (MB) | {' | '.join(f'{m} (ms)' for m in modes)} | "
          f"{' | '.join(f'{m} / doubled' for m in modes if m != 'doubled')} |")
    print("|---|---|---|---|" + "---|" * (2 * len(modes) - 1))
    for shape in SHAPES if args.shape == "all" else [args.shape]:
        tokens, vocab = SHAPES[shape]
        gen = torch.Generator(device=args.device).manual_seed(0)
        logits = torch.randn(2 * tokens, vocab, generator=gen, device=args.device).mul_(3).to(dtype)
        target = torch.randint(2, vocab, (tokens,), generator=gen, device=args.device)
        target[::17] = PAD
        results = {}
        for _ in range(2):  # two interleaved rounds; the best median of each mode
            for name, fn in modes.items():
                results[name] = min(results.get(name, float("inf")), timed(fn, logits, target, 0.1, args.repeats, args.device))
        base = results["doubled"]
        print(f"| {shape} | {tokens} | {vocab} | {logits.numel() * logits.element_size() / 1e6:.0f} | "
              + " | ".join(f"{t * 1e3:.3f}" for t in results.values()) + " | "
              + " | ".join(f"{t / base:.2f}" for m, t in results.items() if m != "doubled") + " |", flush=True)


if __name__ == "__main__":
    main()
