"""Load fairseq checkpoints without running code from them.

Unpickling a ``.pt`` file in full can call any function the file names, so a crafted
checkpoint runs code on the machine that loads it.  :func:`load` unpickles with
``torch.load(weights_only=True)``: tensors and Python containers, plus the few
classes below that fairseq's own checkpoints hold (:func:`checkpoint_globals`).
Anything else is refused with :class:`UntrustedCheckpointError`, which names it.

A checkpoint the user trusts may be loaded in full: ``RDROP_TRUST_CHECKPOINTS=1``
in the environment, or ``--trust-checkpoints`` where a task offers
:class:`TrustCheckpointsFields`.  The first load that needs it warns.

``rdrop-fairseq check-checkpoint FILE...`` says whether files load with the allow-list
(:func:`check`), running nothing in them.
"""
import argparse
import contextlib
import functools
import io
import os
import pickle
import pickletools
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

TRUST_ENV = "RDROP_TRUST_CHECKPOINTS"
TRUST_FLAG = "--trust-checkpoints"

_trusted_by_flag = False
_warned = False


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list, and no opt-in is set."""


class TrustedCheckpointWarning(UserWarning):
    """A checkpoint is loaded in full (it can run code) because the user opted in."""


@dataclass
class TrustCheckpointsFields:
    """The task option that opts in.  A task's options are parsed, and the task set
    up, before fairseq-train, -generate, -interactive and -eval-lm load a checkpoint."""

    trust_checkpoints: bool = field(
        default=False,
        metadata={"help": "load checkpoints that hold objects outside rdrop_fairseq's allow-list "
                          "with full unpickling, which runs any code they carry: only for files "
                          f"you trust (as {TRUST_ENV}=1)"},
    )


def _numpy_reconstruct() -> Callable:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return core.multiarray._reconstruct


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """What fairseq checkpoints hold beyond what ``weights_only`` allows by default.

    Each entry only rebuilds data (a class instance from its attributes, or an array);
    none calls code the file chooses."""
    from fairseq.logging import meters

    reconstruct = _numpy_reconstruct()
    old_meters = (meters.AverageMeter, meters.TimeMeter, meters.StopwatchMeter)
    return [
        # Measured (torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints of
        # the tiny runs in docs/checkpoint-safety.md): the config of a legacy model
        # (cfg["model"]; "args" before fairseq 0.10).
        argparse.Namespace,
        # Measured: the validation meters of --eval-bleu keep n-gram counts as numpy
        # arrays.  Files written under numpy 1 name numpy.core.
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        # A dtype is rebuilt as an instance of its own class (numpy.dtypes.Int64DType
        # for the counts above): those of bool and numbers, never object dtypes.
        *sorted({type(np.dtype(code)) for code in "?bhilqBHILQefd"}, key=str),
        # Measured (checkpoints written by fairseq 0.8.0 and 0.9.0 themselves, tests/fixtures): those
        # releases, which wrote the 2019 pretrained models, pickle their training meters in
        # extra_state["train_meters"]; fairseq keeps the module alias fairseq.meters so that
        # those files load.  Saved again by today's fairseq (average_checkpoints of such files),
        # the same classes are named by their module.  None has a __setstate__.
        *[(meter, f"fairseq.meters.{meter.__name__}") for meter in old_meters],
        *old_meters,
    ]


def trust_checkpoints() -> None:
    """Opt in for this process: load checkpoints outside the allow-list in full."""
    global _trusted_by_flag
    _trusted_by_flag = True


_OMEGACONF_TRUE = ("true", "yes", "on", "y", "1")  # what OmegaConf reads as True for a bool field


def _said_on_command_line(argv: Sequence[str]) -> bool:
    # fairseq's parser takes no abbreviations; fairseq-hydra-train takes overrides.
    overrides = {f"{prefix}task.trust_checkpoints" for prefix in ("", "+", "++")}
    for arg in argv:
        name, _, value = arg.partition("=")
        if arg == TRUST_FLAG or (name in overrides and value.strip().lower() in _OMEGACONF_TRUE):
            return True
    return False


def honour_task_option(task_cfg: Any, from_checkpoint: bool = False, argv: Optional[Sequence[str]] = None) -> None:
    """Opt in when the task has ``trust_checkpoints`` set and the command line says so
    (``--trust-checkpoints``, or the override ``task.trust_checkpoints=true``).

    A task configuration can come from elsewhere: a checkpoint's saved config (fairseq
    sets some of them up as tasks, e.g. a wav2vec or HuBERT encoder's), or a YAML file
    shipped beside one.  Neither is the user's word, so only the command line counts."""
    if from_checkpoint or not getattr(task_cfg, "trust_checkpoints", False):
        return
    if _said_on_command_line(sys.argv[1:] if argv is None else argv):
        trust_checkpoints()


def _flag_offered() -> bool:
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    config = TASK_DATACLASS_REGISTRY.get("rdrop_translation")
    return config is not None and issubclass(config, TrustCheckpointsFields)


def trusted() -> bool:
    return _trusted_by_flag or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def _allowed(entries):
    # torch's allow-list is process-wide: add only what the user has not added, and
    # take away only that.  It holds data types alone, so another load that sees it
    # meanwhile gains nothing that runs code.
    present = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([entry for entry in entries if entry not in present]):
        yield


def _refused_global(error: Exception) -> str:
    message = str(error)
    match = re.search(r"GLOBAL (\S+)", message) or re.search(r"got <class '([^']+)'>", message)
    if match:
        return match.group(1)
    match = re.search(r"Unsupported operand (\d+)", message)  # e.g. protocol 0's INST, or not a pickle
    if match:
        code = chr(int(match.group(1)))
        opcode = pickletools.code2op.get(code)
        return f"the pickle instruction {opcode.name if opcode else repr(code)}"
    return message


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "checkpoint"))


def _load_allowed(f, map_location=None):
    with _allowed(checkpoint_globals()):
        return torch.load(f, map_location=map_location, weights_only=True)


def _is_refusal(error: Exception) -> bool:
    return isinstance(error, pickle.UnpicklingError) and str(error).startswith("Weights only load failed")


def _is_torch_file(f, start: Optional[int]) -> bool:
    """A zip file (torch >= 1.6) or a pickle of protocol 2 or later (torch's legacy format
    starts with one): anything else, such as a text file, is no checkpoint, whatever the
    weights-only unpickler says of its first byte."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as handle:
            head = handle.read(4)
    elif start is not None:
        f.seek(start)
        head = f.read(4)
        f.seek(start)
    else:
        return True  # cannot look without consuming it
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load(f, map_location=None):
    """``torch.load`` of a fairseq checkpoint (a path or a binary file), refusing anything
    outside :func:`checkpoint_globals` unless the user opted in."""
    global _warned
    start = f.tell() if isinstance(f, io.IOBase) and f.seekable() else None
    try:
        return _load_allowed(f, map_location)
    except pickle.UnpicklingError as error:
        if not _is_refusal(error):
            raise
        refused, name = _refused_global(error), _describe(f)
        if not _is_torch_file(f, start):
            raise pickle.UnpicklingError(f"{name}: not a checkpoint: neither a zip file nor a pickle") from None
    if not trusted():
        flag = f", or pass {TRUST_FLAG} with an R-Drop --task" if _flag_offered() else ""
        raise UntrustedCheckpointError(
            f"{name}: refused to load: it holds {refused}, which is not among the objects fairseq "
            "checkpoints hold (rdrop_fairseq.safe_load.checkpoint_globals), and unpickling it could "
            f"run code.  If you trust this file, set {TRUST_ENV}=1{flag}."
        ) from None
    if not _warned:
        _warned = True
        warnings.warn(
            f"{name} holds {refused}, outside the checkpoint allow-list; loading it with full "
            f"unpickling, which runs any code it carries, because {TRUST_ENV} or {TRUST_FLAG} "
            "is set.  Warned once per process.",
            TrustedCheckpointWarning, stacklevel=2,
        )
    if start is not None:
        f.seek(start)
    return torch.load(f, map_location=map_location, weights_only=False)


def outside_allow_list(path) -> Optional[List[str]]:
    """Every global that the checkpoint at ``path`` names beyond the allow-list, read
    statically (nothing is unpickled); None for a file in torch's legacy format (torch <= 1.5,
    as the 2019 pretrained models), which only a load can check."""
    try:
        with _allowed(checkpoint_globals()):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError:  # not a zip file
        return None


def check(path) -> Tuple[str, str]:
    """Whether :func:`load` takes ``path`` without an opt-in ("loads"), refuses it
    ("refused") or cannot read it ("unreadable"), and a line that says why."""
    unreadable = f"{path}: not a checkpoint torch can read"
    try:
        if not _is_torch_file(path, None):
            return "unreadable", f"{unreadable} (neither a zip file nor a pickle)"
        names = outside_allow_list(path)
        if names:
            return "refused", f"{path}: refused: it names {', '.join(names)}, outside the allow-list"
        _load_allowed(path, map_location="cpu")
    except pickle.UnpicklingError as error:
        if _is_refusal(error):
            return "refused", f"{path}: refused: it holds {_refused_global(error)}, outside the allow-list"
        return "unreadable", f"{unreadable} ({error})"
    except Exception as error:  # a damaged file makes torch's unpickler fail in many ways
        return "unreadable", f"{unreadable} ({type(error).__name__}: {error})"
    return "loads", f"{path}: loads with the allow-list"
