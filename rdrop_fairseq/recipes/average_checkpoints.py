"""Average the model parameters of fairseq checkpoints (the usual last-N average).

    python -m rdrop_fairseq.recipes.average_checkpoints --save-dir DIR --last 5 --output DIR/checkpoint.avg5.pt
    python -m rdrop_fairseq.recipes.average_checkpoints --inputs a.pt b.pt --output avg.pt

``--save-dir`` picks the ``--last`` newest checkpoints written by
``--save-interval-updates`` (``checkpoint_<epoch>_<update>.pt``, ordered by update
number), or with ``--epochs`` the epoch checkpoints (``checkpoint<epoch>.pt``).
The output is the newest input with its ``model`` replaced by the mean (taken as
fairseq's ``scripts/average_checkpoints.py`` takes it: half-precision parameters
averaged to float32, integer tensors floor-divided) and its optimizer state dropped (an average is for inference, not for resuming); it is
written under a temporary name and renamed when complete.  The output may not be one of
the inputs, nor carry a name that fairseq-train writes and resumes from
(``checkpoint_last.pt``, ``checkpoint_best.pt``, numbered checkpoints).
"""
import argparse
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from .. import safe_load

UPDATE_CHECKPOINT = re.compile(r"checkpoint_\d+_(\d+)\.pt")
EPOCH_CHECKPOINT = re.compile(r"checkpoint(\d+)\.pt")
TRAINING_CHECKPOINT = re.compile(r"checkpoint(_last|_best|\d+|_\d+_\d+)\.pt")


def last_checkpoints(save_dir: Path, count: int, epochs: bool = False) -> List[Path]:
    """The ``count`` newest update (or epoch) checkpoints of ``save_dir``, oldest first."""
    pattern = EPOCH_CHECKPOINT if epochs else UPDATE_CHECKPOINT
    numbered = []
    for path in Path(save_dir).iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    kind = "epoch checkpoints (checkpoint<epoch>.pt)" if epochs else (
        "update checkpoints (checkpoint_<epoch>_<update>.pt, from --save-interval-updates)")
    if len(numbered) < count:
        raise FileNotFoundError(f"--save-dir {save_dir}: wanted the last {count} {kind}, found {len(numbered)}")
    return [path for _, path in sorted(numbered)[-count:]]


def load(path: Path) -> dict:
    try:
        state = safe_load.load(path, map_location="cpu")
    except (RuntimeError, EOFError, OSError) as err:  # a truncated or corrupt file
        raise ValueError(f"{path}: unreadable checkpoint ({err})") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


class ParameterMean:
    """The mean of model state dicts added one at a time, as fairseq's
    ``scripts/average_checkpoints.py`` takes it: floating-point tensors in float64 and
    returned in their dtype, half precision as float32; other tensors floor-divided."""

    def __init__(self):
        self.totals: Dict[str, torch.Tensor] = {}
        self.dtypes: Dict[str, torch.dtype] = {}
        self.count = 0
        self.first = ""

    def add(self, model: Dict[str, torch.Tensor], name: str) -> None:
        if not self.count:
            self.first = name
            for key, tensor in model.items():
                self.dtypes[key] = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
                self.totals[key] = tensor.to(torch.float64 if tensor.is_floating_point() else tensor.dtype, copy=True)
        else:
            if model.keys() != self.totals.keys():
                diff = sorted(model.keys() ^ self.totals.keys())
                raise ValueError(f"{name} and {self.first} hold different parameters, e.g. {diff[:3]}")
            for key, tensor in model.items():
                if tensor.shape != self.totals[key].shape:
                    raise ValueError(f"{key}: shape {tuple(tensor.shape)} in {name}, "
                                     f"{tuple(self.totals[key].shape)} in {self.first}")
                self.totals[key] += tensor.to(self.totals[key].dtype)
        self.count += 1

    def mean(self) -> Dict[str, torch.Tensor]:
        return {key: (total / self.count if total.is_floating_point() else total // self.count).to(self.dtypes[key])
                for key, total in self.totals.items()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(state: dict, output: Path) -> None:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise carry over to the output
        torch.save(state, tmp)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def average_checkpoints(inputs: Sequence[Path], output: Path) -> dict:
    if not inputs:
        raise ValueError("no checkpoints to average")
    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        if Path(output).exists() and os.path.samefile(path, output):
            raise ValueError(f"--output {output} is one of the inputs: the average would replace it")
    if TRAINING_CHECKPOINT.fullmatch(Path(output).name):
        raise ValueError(f"--output {output}: fairseq-train writes and resumes from checkpoints of that name, "
                         "and an average has no optimizer state; choose another name, e.g. checkpoint.avg5.pt")
    mean, result = ParameterMean(), None
    for path in inputs:
        result = None  # one checkpoint in memory at a time, as in fairseq's script
        result = load(path)
        mean.add(result.pop("model"), str(path))
        result["last_optimizer_state"] = None  # an average is for inference, not for resuming
    result["model"] = mean.mean()
    result["extra_state"] = dict(result.get("extra_state") or {}, averaged_from=[str(p) for p in inputs])
    save_atomic(result, output)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.average_checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", type=Path, help="checkpoint files to average")
    source.add_argument("--save-dir", type=Path, help="folder of a training run")
    parser.add_argument("--last", type=int, default=5, help="with --save-dir: how many newest checkpoints")
    parser.add_argument("--epochs", action="store_true", help="with --save-dir: epoch checkpoints, not update ones")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last must be >= 1, got {args.last}")
    try:
        if args.save_dir is not None:
            if not args.save_dir.is_dir():
                raise FileNotFoundError(f"--save-dir: no such folder: {args.save_dir}")
            inputs = last_checkpoints(args.save_dir, args.last, args.epochs)
        else:
            inputs = args.inputs
        average_checkpoints(inputs, args.output)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:  # UntrustedCheckpointError is one
        parser.error(str(err))
    print(f"averaged {len(inputs)} checkpoints: {' '.join(p.name for p in inputs)} -> {args.output}")


if __name__ == "__main__":
    main()
