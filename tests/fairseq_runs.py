"""Tiny fairseq runs for the reliability tests: a toy parallel corpus, the
arguments of a small R-Drop transformer, and fairseq-train launched in a child
process whose JSON log keeps full precision.

Run as a script, this file is that child: ``python fairseq_runs.py [--reseed-micro-batches]
FAIRSEQ_TRAIN_ARGS...``.  fairseq rounds logged metrics to 3 decimals, too coarse to
compare two runs to 1e-6, so the child turns the rounding of logged meters off; it also runs
``--ddp-backend pytorch_ddp`` on CPU (:func:`pytorch_ddp_on_cpu`).
"""
import contextlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import rdrop_fairseq

USER_DIR = str(Path(rdrop_fairseq.__file__).resolve().parent)
REPO = str(Path(USER_DIR).parent)
SRC, TGT = "de", "en"
SEED = 7

TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings",
]

# fairseq's "... | train_inner | {json}", or "INFO:train_inner:{json}" where logging was
# configured before fairseq_cli set its format.
_TRAIN_INNER = re.compile(r"\btrain_inner(?: \| |:)(\{.*\})$", re.MULTILINE)

_corpus_cache: Dict[str, Path] = {}


def write_toy_corpus(text_dir: Path, sizes=(("train", 96), ("valid", 16), ("test", 16))) -> None:
    """A deterministic toy task: the target is the source reversed, word by word renamed."""
    rng = random.Random(0)
    text_dir.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        src_lines, tgt_lines = [], []
        for _ in range(count):
            words = [rng.randrange(40) for _ in range(rng.randint(3, 12))]
            src_lines.append(" ".join(f"s{w}" for w in words))
            tgt_lines.append(" ".join(f"t{w}" for w in reversed(words)))
        for lang, lines in ((SRC, src_lines), (TGT, tgt_lines)):
            (text_dir / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def toy_data(tmp_path_factory) -> Path:
    """The binarised toy corpus, made once per test session."""
    if "bin" not in _corpus_cache:
        from rdrop_fairseq.recipes.prepare import binarize

        root = tmp_path_factory.mktemp("toy-corpus")
        write_toy_corpus(root / "text")
        binarize(root / "text", root / "bin", SRC, TGT)
        _corpus_cache["bin"] = root / "bin"
    return _corpus_cache["bin"]


def train_args(data: Path, save_dir: Path, *extra: str, dropout: float = 0.3) -> List[str]:
    """fairseq-train arguments of a small R-Drop run logging every update in JSON."""
    return [
        str(data), "--user-dir", USER_DIR, "--cpu", "--seed", str(SEED),
        "--task", "rdrop_translation", "--source-lang", SRC, "--target-lang", TGT,
        "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", "5",
        "--label-smoothing", "0.1", *TINY_TRANSFORMER,
        "--dropout", str(dropout), "--optimizer", "adam", "--lr", "1e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4",
        "--batch-size", "16", "--required-batch-size-multiple", "1",
        "--num-workers", "0", "--disable-validation", "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", "1", "--no-progress-bar",
        "--save-dir", str(save_dir), *extra,
    ]


def train_command(args: Sequence[str], reseed_micro_batches: bool = False) -> List[str]:
    flag = ["--reseed-micro-batches"] if reseed_micro_batches else []
    return [sys.executable, str(Path(__file__).resolve()), *flag, *args]


def start_train(args: Sequence[str], reseed_micro_batches: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(train_command(args, reseed_micro_batches), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for a run; its whole output, or an AssertionError carrying it."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"fairseq-train timed out:\n{output[-3000:]}")
    if process.returncode:
        raise AssertionError(f"fairseq-train exited with {process.returncode}:\n{output[-3000:]}")
    return output


def train_inner_logs(output: str) -> List[dict]:
    """The per-interval ``train_inner`` records of a ``--log-format json`` run, in order.

    A metric that no step of the interval logged, e.g. ``kl_loss`` between the
    R-Drop steps of ``--rdrop-every-k-steps``, is None."""
    records = []
    for match in _TRAIN_INNER.finditer(output):
        record = json.loads(match.group(1))
        records.append({key: None if value is None else float(value) for key, value in record.items()})
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def full_precision_logs():
    """Logged meters unrounded: fairseq's 3 decimals are too coarse to compare runs."""
    from fairseq.logging import meters

    rounding = meters.safe_round
    meters.safe_round = lambda number, ndigits: number
    try:
        yield
    finally:
        meters.safe_round = rounding


@contextlib.contextmanager
def pytorch_ddp_on_cpu():
    """``--ddp-backend pytorch_ddp`` on CPU workers: fairseq gives PyTorch's DistributedDataParallel
    ``device_ids=[device_id]`` whatever the device, which PyTorch refuses for a CPU module.  The same
    class without them runs the same reducer over gloo."""
    from fairseq.models import distributed_fairseq_model
    from torch.nn.parallel import DistributedDataParallel

    class CpuDistributedDataParallel(DistributedDataParallel):
        def __init__(self, module, device_ids=None, output_device=None, **kwargs):
            super().__init__(module, **kwargs)

    plain = distributed_fairseq_model.DistributedDataParallel
    distributed_fairseq_model.DistributedDataParallel = CpuDistributedDataParallel
    try:
        yield
    finally:
        distributed_fairseq_model.DistributedDataParallel = plain


@contextlib.contextmanager
def reseeded_micro_batches(seed: int):
    """Seed each micro-batch as fairseq seeds a whole update (seed + update number).

    Every data-parallel worker starts its batch from that seed, while one process
    with --update-freq N draws the later micro-batches' dropout masks from a stream
    the earlier ones advanced.  Reseeding each micro-batch gives one process the
    workers' masks, so the two runs can be compared exactly."""
    from fairseq import utils
    from fairseq.tasks.fairseq_task import FairseqTask

    plain_train_step = FairseqTask.train_step

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kw):
        utils.set_torch_seed(seed + update_num)
        return plain_train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad, **kw)

    FairseqTask.train_step = train_step
    try:
        yield
    finally:
        FairseqTask.train_step = plain_train_step


class _TrainInnerRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record):
        if record.name == "train_inner":
            self.lines.append("train_inner | " + record.getMessage())


def train_in_process(args: Sequence[str], reseed_micro_batches: bool = False) -> List[dict]:
    """fairseq-train's ``main`` in this process; its ``train_inner`` records."""
    from fairseq_cli import train

    cfg = parse_train_config(args)
    bar_logger = logging.getLogger("fairseq.logging.progress_bar")
    records, level = _TrainInnerRecords(), bar_logger.level
    bar_logger.addHandler(records)
    bar_logger.setLevel(logging.INFO)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(full_precision_logs())
            if reseed_micro_batches:
                stack.enter_context(reseeded_micro_batches(cfg.common.seed))
            train.main(cfg)
    finally:
        bar_logger.removeHandler(records)
        bar_logger.setLevel(level)
    return train_inner_logs("\n".join(records.lines))


def parse_train_config(args: Sequence[str]):
    """fairseq-train's configuration for ``args``, as its command line builds it."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), input_args=list(args)))


def build_trainer(args: Sequence[str]):
    """A fairseq Trainer set up as fairseq-train sets it up, without the training loop."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cfg = parse_train_config(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return Trainer(cfg, task, model, criterion)


def training_sample(trainer, size: int = 8) -> dict:
    """The first ``size`` training pairs as one collated batch."""
    trainer.task.load_dataset("train")
    dataset = trainer.task.dataset("train")
    return dataset.collater([dataset[i] for i in range(size)])


def main(argv: List[str]) -> None:
    from fairseq_cli import train

    reseed = bool(argv) and argv[0] == "--reseed-micro-batches"
    argv = argv[1:] if reseed else argv
    sys.argv = ["fairseq-train", *argv]
    with contextlib.ExitStack() as stack:
        stack.enter_context(full_precision_logs())
        stack.enter_context(pytorch_ddp_on_cpu())
        if reseed:
            stack.enter_context(reseeded_micro_batches(int(argv[argv.index("--seed") + 1])))
        train.cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
