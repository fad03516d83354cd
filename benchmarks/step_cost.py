"""Cost of one training step (forward + backward) of R-Drop against its floor.

On the same model, tokens and seed it times, in one process, interleaved so that
load drift hits every mode alike:

  doubled         stock label_smoothed_cross_entropy on the batch repeated twice (the floor)
  plugin          this plugin's rdrop_label_smoothed_cross_entropy (alpha 5), from the logits,
                  with the loss kernel RDROP_KERNEL=auto picks (the fused Triton kernels on
                  CUDA, the chunked torch Function on a CPU)
  plugin_torch    the same with RDROP_KERNEL=torch (CUDA only: on a CPU it is ``plugin``)
  plugin_lprobs   the plugin through the model's log-softmax (the route of models that
                  normalise their own way), kernel as RDROP_KERNEL=auto picks
  fairseq         fairseq's label_smoothed_cross_entropy_with_rdrop (alpha 5)
  single          stock label_smoothed_cross_entropy on the single batch

and prints the median step time with its ratio to ``doubled``.  Peak memory is the
peak of the tensors allocated during one step (parameters excluded), per mode: on a
CPU in a fresh subprocess that follows every tensor storage from its creation to its
release (exact and repeatable, unlike RSS), on CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/step_cost.py --shape iwslt
    python benchmarks/step_cost.py --shape all --device cuda --dtype bf16
    python benchmarks/step_cost.py --shape wmt_full --modes doubled,plugin,fairseq
    RDROP_CHUNK_TOKENS=64 python benchmarks/step_cost.py   # another KL chunk (torch path only: plugin on a
                                                          # CPU, plugin_torch on CUDA)
"""
import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rdrop_fairseq  # noqa: E402  (registers the plugin, applies the compat shims)
from rdrop_fairseq.criterions import rdrop_criterion  # noqa: E402
from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

SHAPES = {
    # a transformer_iwslt_de_en-shaped model, 2 layers of 256
    "iwslt": dict(task="translation", vocab=10_000, batch=32, length=32, smoothing=0.1,
                  model="--arch transformer_iwslt_de_en --encoder-layers 2 --decoder-layers 2 "
                        "--encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 "
                        "--decoder-ffn-embed-dim 1024 --share-all-embeddings --dropout 0.3"),
    # the whole transformer_iwslt_de_en, 4,096 target tokens per copy
    "iwslt_full": dict(task="translation", vocab=10_000, batch=128, length=32, smoothing=0.1,
                       model="--arch transformer_iwslt_de_en --share-all-embeddings --dropout 0.3"),
    # the WMT big output layer (V=32k, d=1024, 4096 tokens per copy) on a one-layer body
    "wmt": dict(task="translation", vocab=32_000, batch=128, length=32, smoothing=0.1,
                model="--arch transformer_vaswani_wmt_en_de_big --encoder-layers 1 --decoder-layers 1 "
                      "--share-all-embeddings --dropout 0.1"),
    # the whole transformer_vaswani_wmt_en_de_big, 4,096 target tokens per copy
    "wmt_full": dict(task="translation", vocab=32_000, batch=128, length=32, smoothing=0.1,
                     model="--arch transformer_vaswani_wmt_en_de_big --share-all-embeddings --dropout 0.3"),
    # WikiText-103's vocabulary on a small LM body; the KL is chunked
    "lm": dict(task="language_modeling", vocab=267_744, batch=2, length=128, smoothing=0.0,
               model="--arch transformer_lm --decoder-layers 1 --decoder-embed-dim 256 "
                     "--decoder-ffn-embed-dim 1024 --decoder-attention-heads 4 --dropout 0.1"),
}
CHUNK_TOKENS = int(os.environ.get("RDROP_CHUNK_TOKENS", "0"))  # 0: the criterion's default
MODES = {
    "doubled": ("label_smoothed_cross_entropy", 2),
    "plugin": ("rdrop_label_smoothed_cross_entropy", 1),
    "plugin_torch": ("rdrop_label_smoothed_cross_entropy", 1),
    "plugin_lprobs": ("rdrop_label_smoothed_cross_entropy", 1),
    "fairseq": ("label_smoothed_cross_entropy_with_rdrop", 1),
    "single": ("label_smoothed_cross_entropy", 1),
}


_MODELS = {}


def build(shape, mode, device, dtype, workdir):
    spec = SHAPES[shape]
    criterion, repeat = MODES[mode]
    data = Path(workdir) / shape  # each shape its own dictionaries
    data.mkdir(exist_ok=True)
    names = ["dict.txt"] if spec["task"] == "language_modeling" else ["dict.de.txt", "dict.en.txt"]
    for name in names:
        if not (data / name).exists():
            (data / name).write_text("".join(f"w{i} 1\n" for i in range(spec["vocab"] - 4)))
    argv = [str(data), "--user-dir", str(REPO / "rdrop_fairseq"), "--task", spec["task"],
            "--criterion", criterion, "--label-smoothing", str(spec["smoothing"]), "--seed", "1",
            *spec["model"].split()]
    if mode != "doubled" and mode != "single":
        argv += ["--rdrop-alpha", "5"]
    if mode.startswith("plugin") and CHUNK_TOKENS:
        argv += ["--rdrop-chunk-tokens", str(CHUNK_TOKENS)]
    if spec["task"] == "translation":
        argv += ["--source-lang", "de", "--target-lang", "en"]
    else:
        argv += ["--tokens-per-sample", str(spec["length"])]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    key = (shape, device, dtype)
    if key not in _MODELS:  # every mode steps the same model: built once a shape
        torch.manual_seed(1)
        _MODELS.clear()
        _MODELS[key] = task.build_model(cfg.model).to(device=device, dtype=dtype)
    model = _MODELS[key]
    model.train()
    if mode == "plugin_lprobs":
        route = mock.patch.object(rdrop_criterion, "log_softmax_input", lambda *args: None)
    elif mode == "plugin_torch":
        route = mock.patch.dict(os.environ, {"RDROP_KERNEL": "torch"})
    else:
        route = contextlib.nullcontext()
    return model, task.build_criterion(cfg.criterion).to(device), make_sample(shape, repeat, device), route


def make_sample(shape, repeat, device):
    spec = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    batch, length, vocab = spec["batch"], spec["length"], spec["vocab"]
    tokens = torch.randint(4, vocab, (batch, length), generator=gen).repeat(repeat, 1).to(device)
    target = torch.roll(tokens, -1, dims=1)
    target[:, -1] = 2
    net_input = {"src_tokens": tokens, "src_lengths": torch.full((len(tokens),), length, device=device)}
    if spec["task"] == "translation":
        net_input["prev_output_tokens"] = torch.roll(target, 1, dims=1)
    return {"id": torch.arange(len(tokens)), "net_input": net_input, "target": target,
            "ntokens": target.numel(), "nsentences": len(tokens)}


def step(model, criterion, sample, route):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    with route:
        # fairseq's rdrop criterion concatenates the sample in place: give it its own copy
        loss, _, _ = criterion(model, copy.copy(sample) | {"net_input": dict(sample["net_input"])})
    loss.backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class TensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages created while it is active and still alive.

    Every new storage an operator returns is counted once, from its creation until its
    Python object is finalised (torch keeps that object alive exactly as long as the
    storage), so views, in-place results and autograd's saved tensors are all right.
    Workspace that a kernel frees before returning is not seen."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.tracked = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.tracked and key not in inputs:  # not in place on older tensors
                    self.tracked.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, size)
        return out

    def _release(self, key, size):
        self.tracked.discard(key)
        self.live -= size


def measure_memory(shape, mode, device, dtype, workdir):
    model, criterion, sample, route = build(shape, mode, device, dtype, workdir)
    step(model, criterion, sample, route)  # first-touch work, as in the timed steps
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, criterion, sample, route)
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    with TensorPeak() as peak:
        step(model, criterion, sample, route)
    return peak.peak


def run_shape(shape, args, dtype, workdir):
    modes = args.modes
    built = {mode: build(shape, mode, args.device, dtype, workdir) for mode in modes}
    times = {mode: [] for mode in modes}
    for mode in modes:  # warm-up
        step(*built[mode])
    for _ in range(args.repeats):
        for mode in modes:
            sync(args.device)
            start = time.perf_counter()
            step(*built[mode])
            sync(args.device)
            times[mode].append(time.perf_counter() - start)
    del built
    memory = {}
    for mode in modes:
        if args.device == "cuda":
            memory[mode] = measure_memory(shape, mode, args.device, dtype, workdir)
        else:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-only", mode, "--shape", shape, "--dtype", args.dtype,
                 "--device", args.device], capture_output=True, text=True, check=True)
            memory[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    return {mode: (statistics.median(times[mode]), memory[mode]) for mode in modes}


def report(shape, results, args):
    base_time, base_mem = results["doubled"]
    kernel = os.environ.get("RDROP_KERNEL", "auto")
    spec = SHAPES[shape]
    print(f"\n## {shape}: V={spec['vocab']}, {spec['batch']}x{spec['length']} tokens per copy, "
          f"{args.device}, {args.dtype}, median of {args.repeats}, RDROP_KERNEL={kernel}")
    print("| mode | step time (s) | time / doubled | peak memory (MiB) | memory / doubled |")
    print("|---|---|---|---|---|")
    for mode, (seconds, peak) in results.items():
        print(f"| {mode} | {seconds:.4f} | {seconds / base_time:.3f} | {peak / 2**20:.0f} | {peak / base_mem:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="iwslt")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--modes", help="comma-separated modes to run (default: all; plugin_torch only on CUDA)")
    parser.add_argument("--memory-only", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.modes:
        args.modes = [mode.strip() for mode in args.modes.split(",")]
        unknown = sorted(set(args.modes) - set(MODES))
        if unknown or "doubled" not in args.modes:
            parser.error(f"--modes: unknown {unknown}" if unknown else "--modes must include doubled, the baseline")
    else:
        args.modes = [mode for mode in MODES if args.device == "cuda" or mode != "plugin_torch"]
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as workdir:
        if args.memory_only:
            print(json.dumps({"peak_bytes": measure_memory(args.shape, args.memory_only, args.device, dtype, workdir)}))
            return
        for shape in SHAPES if args.shape == "all" else [args.shape]:
            report(shape, run_shape(shape, args, dtype, workdir), args)


if __name__ == "__main__":
    main()
