"""Average the model parameters of fairseq checkpoints (the usual last-N average).

    python -m rdrop_fairseq.recipes.average_checkpoints --save-dir DIR --last 5 --output DIR/checkpoint.avg5.pt
    python -m rdrop_fairseq.recipes.average_checkpoints --inputs a.pt b.pt --output avg.pt

``--save-dir`` picks the ``--last`` newest checkpoints written by
``--save-interval-updates`` (``checkpoint_<epoch>_<update>.pt``, ordered by update
number), or with ``--epochs`` the epoch checkpoints (``checkpoint<epoch>.pt``).
The output is the newest input with its ``model`` replaced by the mean and its
optimizer state dropped (an average is for inference, not for resuming); it is
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
    return safe_load.load(path, map_location="cpu")


def average_state_dicts(states: Sequence[Dict[str, torch.Tensor]], names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Mean of floating-point tensors (accumulated in float64); other tensors must agree."""
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != first.keys():
            diff = sorted(state.keys() ^ first.keys())
            raise ValueError(f"{name} and {names[0]} hold different parameters, e.g. {diff[:3]}")
    averaged = {}
    for key, ref in first.items():
        tensors = [state[key] for state in states]
        for tensor, name in zip(tensors[1:], names[1:]):
            if tensor.shape != ref.shape:
                raise ValueError(f"{key}: shape {tuple(tensor.shape)} in {name}, {tuple(ref.shape)} in {names[0]}")
        if ref.is_floating_point():
            total = torch.zeros(ref.shape, dtype=torch.float64)
            for tensor in tensors:
                total += tensor.to(torch.float64)
            averaged[key] = (total / len(tensors)).to(ref.dtype)
        else:
            if any(not torch.equal(tensor, ref) for tensor in tensors[1:]):
                raise ValueError(f"{key}: non-float tensor differs between checkpoints; cannot average it")
            averaged[key] = ref.clone()
    return averaged


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
    states = [load(path) for path in inputs]
    for state, path in zip(states, inputs):
        if "model" not in state:
            raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    result = dict(states[-1])
    result["model"] = average_state_dicts([s["model"] for s in states], [str(p) for p in inputs])
    result["last_optimizer_state"] = None
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
