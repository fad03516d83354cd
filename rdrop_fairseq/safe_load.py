"""Load fairseq checkpoints without running code from them.

Unpickling a ``.pt`` file in full can call any function the file names, so a crafted
checkpoint runs code on the machine that loads it.  :func:`load` unpickles with
``torch.load(weights_only=True)``: tensors and Python containers, plus the few
classes below that fairseq's own checkpoints hold (:func:`checkpoint_globals`).
Anything else is refused with :class:`UntrustedCheckpointError`, which names it.

A checkpoint the user trusts may be loaded in full: ``RDROP_TRUST_CHECKPOINTS=1``
in the environment, or ``--trust-checkpoints`` where a task offers
:class:`TrustCheckpointsFields`.  The first load that needs it warns.

A checkpoint's config is data, but fairseq hands some of its strings to ``eval`` when it
builds the model, the criterion or the optimizer (``adaptive_softmax_cutoff``, fconv's
``encoder_layers``, wav2vec's ``conv_feature_layers``, ...).  :func:`config_eval` takes
``eval``'s place in those modules (:mod:`rdrop_fairseq.compat`): it evaluates literals and
``+ - *`` on them, which is all fairseq's values need, and refuses anything else unless the
user opted in.  OmegaConf resolves an interpolation in a config string (``${oc.env:VAR}`` calls a
resolver) when the value is read; fairseq saves configs resolved, so :func:`load` refuses a
checkpoint whose config holds one, or is no tree of the size fairseq writes.  The globals that
torch allows by default but no fairseq checkpoint names are withheld from torch's own unpickler
for the load (those that make a tensor over a numpy array's memory: :func:`_withheld_globals`), so
whichever pickle of the file torch reads, they are refused there.

``from_pretrained`` of a model archive (``.tar.gz``) extracts it with
:func:`load_archive_file`, which refuses members that would land outside the folder it
extracts into, and leaves an archive of the user's own in place.

``rdrop-fairseq check-checkpoint FILE...`` says whether files load with the allow-list
(:func:`check`), running nothing in them.
"""
import argparse
import ast
import atexit
import builtins
import contextlib
import contextvars
import functools
import io
import logging
import os
import pickle
import pickletools
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import _weights_only_unpickler

logger = logging.getLogger(__name__)
TRUST_ENV = "RDROP_TRUST_CHECKPOINTS"
TRUST_FLAG = "--trust-checkpoints"

_trusted_by_flag = False
_task_offers_flag = False  # a task with trust_checkpoints was set up from the command line
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


class UntrustedConfigValueError(ValueError):
    """A config string that fairseq evaluates is not a literal, and no opt-in is set."""


# The longest list, string or bytes that ``+`` or ``*`` may build in a config value, and the longest
# config string evaluated: fairseq's values are a few dozen characters, and these bounds keep a crafted
# one from exhausting memory or time.
_CONFIG_VALUE_LIMIT = 10_000
_CONFIG_SOURCE_LIMIT = 10_000
_CONFIG_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(item) for item in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand)
        if isinstance(operand, (int, float, complex)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _CONFIG_OPERATORS:
        left, right = _literal(node.left), _literal(node.right)
        sequences = (list, tuple, str, bytes)
        if isinstance(node.op, ast.Mult):
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            size = len(sequence) * max(count, 0) if isinstance(sequence, sequences) and isinstance(count, int) else 0
        else:
            size = len(left) + len(right) if isinstance(left, sequences) and isinstance(right, sequences) else 0
        if size > _CONFIG_VALUE_LIMIT:
            raise ValueError(f"builds a sequence longer than {_CONFIG_VALUE_LIMIT:,}")
        try:
            return _CONFIG_OPERATORS[type(node.op)](left, right)
        except TypeError as error:
            raise ValueError(str(error)) from None
    if isinstance(node, ast.BinOp):
        raise ValueError(f"the operator {type(node.op).__name__} is not allowed")
    raise ValueError(f"{type(node).__name__} is not a literal")


def config_literal(text: str) -> Any:
    """The value of a fairseq config string such as ``"[(512, 3)] * 20"`` or ``"(0.9, 0.98)"``:
    numbers, strings, True/False/None, lists, tuples, sets and dicts of them, unary minus,
    and ``+ - *``.  Raises ValueError for anything else (a name, a call, an attribute)."""
    if len(text) > _CONFIG_SOURCE_LIMIT:
        raise ValueError(f"longer than {_CONFIG_SOURCE_LIMIT:,} characters")
    return _literal(ast.parse(text.strip(), mode="eval").body)


def config_eval(source, globals=None, locals=None):  # noqa: A002 (eval's own signature)
    """``eval`` for the fairseq modules that evaluate config strings (see the module's
    docstring): :func:`config_literal`, or the builtin ``eval`` once the user opted in."""
    if trusted():
        return builtins.eval(source, globals, locals)
    try:
        if not isinstance(source, str):
            raise ValueError("not a string")
        return config_literal(source)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError) as error:
        raise UntrustedConfigValueError(
            f"refused to evaluate the config value {source!r} ({error}): fairseq evaluates it as Python, "
            "and a checkpoint's config could run code that way, so rdrop_fairseq evaluates only literals "
            "(numbers, strings, lists, tuples, dicts, and + - * on them).  Write the value as such a literal, "
            f"or, if you trust the checkpoint and the command, {_opt_ins()}."
        ) from None


def _numpy_reconstruct() -> Callable:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return core.multiarray._reconstruct


# The dtypes of fairseq's arrays (the n-gram counts of --eval-bleu): bools and numbers.
_PLAIN_DTYPE_CHARS = "?bhilqBHILQefd"


def _is_plain(dtype: "np.dtype") -> bool:
    """Whether ``dtype`` is numpy's own dtype of a bool or a number, in either byte order.  A file
    can rebuild a dtype's state (BUILD calls ``dtype.__setstate__``), giving it fields or a sub-array
    that reach past its items while it still compares equal to int64: so every part of that state is
    compared with the dtype numpy makes itself."""
    canonical = np.dtype(dtype.str)
    return (canonical.char in _PLAIN_DTYPE_CHARS and type(dtype) is type(canonical)
            and dtype.byteorder == canonical.byteorder and dtype.itemsize == canonical.itemsize
            and dtype.alignment == canonical.alignment and dtype.flags == canonical.flags
            and dtype.fields is None and dtype.subdtype is None and dtype.metadata is None)


def _plain(dtype: "np.dtype") -> "np.dtype":
    # dtype.str, not str(dtype): a dtype the file rebuilt can have fields that hold itself
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"an array of Python objects (dtype {dtype.str}), read from raw pointers")
    if not _is_plain(dtype):
        raise pickle.UnpicklingError(f"a numpy dtype ({dtype.str}) that is not one of bools and numbers")
    return dtype


# The numpy dtypes and arrays made by the load in progress: the file can rebuild their state (BUILD) after
# they are made, and put them where no walk of the loaded state looks (an OrderedDict's attributes, a dict's keys),
# so each one is checked once the load is over (_numpy_made_not_plain).
_MADE: "contextvars.ContextVar[Optional[list]]" = contextvars.ContextVar("rdrop_safe_load_numpy_made", default=None)


def _made(obj):
    made = _MADE.get()
    if made is not None:
        made.append(obj)
    return obj


def _in_own_load() -> None:
    """The numpy entries are on torch's process-wide list while a load of this module runs; another
    thread's ``torch.load(weights_only=True)`` meanwhile would get them without the checks made after the
    load (:func:`_numpy_made_not_plain`): it is refused here."""
    if _MADE.get() is None:
        raise pickle.UnpicklingError("numpy arrays and dtypes, allowed only in rdrop_fairseq.safe_load's own "
                                     "loads, which check them once the file is read")


def _dtype(*args) -> "np.dtype":
    """``numpy.dtype`` for a checkpoint: bools and numbers (an object dtype would let the file's bytes be
    read as pointers), as numpy's own shared dtype of that type.  numpy pickles a dtype as a copy that BUILD
    then gives its state; a file could give a copy fields that hold itself (hashing it, as a dict key does,
    then recurses in C until the process dies) or that reach past an array's items.  The shared dtypes
    ignore BUILD: so the byte order in the file's state is ignored too, and arrays are read in this
    machine's (those of a file written on a big-endian machine would be misread; fairseq's arrays are
    its validation meters' n-gram counts)."""
    _in_own_load()
    return _made(np.dtype(_plain(np.dtype(*args)).char))


def _ndarray(*args):
    """What a file gets for ``numpy.ndarray``: the class to name to :func:`_reconstruct`, and a refusal when
    called.  ``numpy.ndarray(shape, dtype, buffer)`` checks the buffer against the dtype's item size
    before it expands a sub-array that the file gave the dtype, so it would read past the file's bytes."""
    raise pickle.UnpicklingError("an array built by numpy.ndarray(shape, dtype, buffer) over the file's bytes, "
                                 "which numpy's own pickles never do (they rebuild arrays with _reconstruct)")


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` (an array that BUILD then fills from the file's bytes), for plain arrays
    of numbers only, and of zeros until then: numpy's leaves the memory as it found it, and a file that
    sends no BUILD would get the heap's leftovers (pointers among them) into its arrays."""
    _in_own_load()
    if subtype is not _ndarray:
        raise pickle.UnpicklingError(f"an array rebuilt as {subtype!r}, not numpy.ndarray")
    array = _numpy_reconstruct()(np.ndarray, shape, _plain(np.dtype(dtype)))
    array.fill(0)
    return _made(array)


def _build_only(cls: type) -> Tuple[type, str]:
    """An allow-list entry that lets BUILD fill in instances of ``cls`` (torch allows it for the classes
    on the list) under a name that no file can write, so that no file can call ``cls``: the unpickler
    looks up ``module.name``, which always has a dot."""
    return cls, f"BUILD of {cls.__name__}"


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """What fairseq checkpoints hold beyond what ``weights_only`` allows by default.

    Each entry only rebuilds data (a class instance from its attributes, or an array);
    none calls code the file chooses."""
    from fairseq.logging import meters

    old_meters = (meters.AverageMeter, meters.TimeMeter, meters.StopwatchMeter)
    return [
        # Measured (torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints of
        # the tiny runs in docs/checkpoint-safety.md): the config of a legacy model
        # (cfg["model"]; "args" before fairseq 0.10).
        argparse.Namespace,
        # Measured: the validation meters of --eval-bleu keep n-gram counts as numpy
        # arrays.  Files written under numpy 1 name numpy.core.
        # A file may call what it names with arguments of its own: numpy.dtype("O") and then
        # numpy.ndarray(shape, dtype, buffer) would make an array whose elements are pointers
        # read from the file.  So the dtypes it can make are of numbers and bools only, and
        # load() refuses an array or dtype that is not such a one after the file rebuilt its
        # state; an array over a buffer of numbers is only data, whose size numpy checks.
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_ndarray, "numpy.ndarray"),
        (_dtype, "numpy.dtype"),
        # BUILD fills in the arrays and dtypes made above (a dtype is an instance of its own
        # class, numpy.dtypes.Int64DType for the counts): those of bool and numbers only.
        _build_only(np.ndarray),
        *sorted({_build_only(type(np.dtype(char))) for char in _PLAIN_DTYPE_CHARS}, key=lambda entry: entry[1]),
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
    global _task_offers_flag
    if from_checkpoint:
        return
    _task_offers_flag = _task_offers_flag or getattr(task_cfg, "trust_checkpoints", None) is not None
    if not getattr(task_cfg, "trust_checkpoints", False):
        return
    if _said_on_command_line(sys.argv[1:] if argv is None else argv):
        trust_checkpoints()


def _opt_ins() -> str:
    """The opt-ins that work from here: the task option only where this process set up a
    task from the command line that has it (fairseq-validate and from_pretrained set theirs
    up from the checkpoint, after loading it)."""
    return f"set {TRUST_ENV}=1" + (f", or pass {TRUST_FLAG}" if _task_offers_flag else "")


def trusted() -> bool:
    return _trusted_by_flag or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _entry_name(entry) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


@contextlib.contextmanager
def _allowed(entries):
    # torch's allow-list is process-wide: add only what the user has not added, and take away only that.
    # It holds data types alone, so another load that sees it meanwhile gains nothing that runs code.  An
    # entry of the user's under one of these names (numpy.ndarray, say, which torch's own error message
    # suggests adding) would stand beside ours, and torch would pick one of the two at random: it is taken
    # off the list for the load, and put back.  So are the globals torch allows by default that no
    # checkpoint fairseq writes names (_withheld_globals): the unpickler itself refuses them, whichever of
    # the file's pickles it reads.
    present = torch.serialization.get_safe_globals()
    names = {_entry_name(entry) for entry in entries}
    shadowing = [entry for entry in present if entry not in entries and _entry_name(entry) in names]
    if shadowing:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([entry for entry in present if entry not in shadowing])
    defaults = _weights_only_unpickler._get_allowed_globals()  # torch's own, cached: the dict every load reads
    withheld = {name: defaults.pop(name) for name in _withheld_globals() if name in defaults}
    try:
        # torch checks a sparse tensor's indices against its size only when asked to
        with torch.serialization.safe_globals([entry for entry in entries if entry not in present]), \
                torch.sparse.check_sparse_tensor_invariants():
            yield
    finally:
        defaults.update(withheld)
        if shadowing:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(present)


def _withheld_globals() -> List[str]:
    """Globals that torch's weights-only unpickler allows by default, and that no checkpoint fairseq writes
    names (its tensors are ``torch._utils._rebuild_tensor_v2`` of storages).  Each makes a tensor over a
    numpy array's memory, which the file can then free by rebuilding the array (BUILD again) while the
    tensor still reads and writes it: ``_rebuild_device_tensor_from_numpy``, and the tensor classes'
    legacy constructors (``torch.Tensor(array)``, ``torch.FloatTensor(array)``, ...), which share it."""
    return ["torch._utils._rebuild_device_tensor_from_numpy", "torch.Tensor",
            *(f"{cls.__module__}.{cls.__name__}" for cls in torch._tensor_classes)]


def _refused_global(error: Exception) -> str:
    message = str(error)
    match = (re.search(r"GLOBAL (\S+)", message) or re.search(r"got <class '([^']+)'>", message)
             or re.search(r"WeightsUnpickler error:\s*((?:an array|a numpy dtype) [^\n]+)", message))
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


# torch's allow-list is process-wide: one load at a time changes it (_allowed), so that two in threads do not
# take each other's entries away.
_LOADING = threading.RLock()


def _load_allowed(f, map_location=None) -> Tuple[Any, list]:
    """The state, unpickled with the allow-list, and the numpy dtypes and arrays the load made."""
    made = []
    token = _MADE.set(made)
    try:
        with _LOADING, _allowed(checkpoint_globals()):
            return torch.load(f, map_location=map_location, weights_only=True), made
    finally:
        _MADE.reset(token)


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
        state, made = _load_allowed(f, map_location)
    except pickle.UnpicklingError as error:
        if not _is_refusal(error):
            raise
        refused, name = _refused_global(error), _describe(f)
        if not _is_torch_file(f, start):
            raise pickle.UnpicklingError(f"{name}: not a checkpoint: neither a zip file nor a pickle") from None
    else:
        reason = None if trusted() else _unsafe_content(state, made)
        if reason:
            raise UntrustedCheckpointError(f"{_describe(f)}: refused to load: {reason}.  If you trust this file, "
                                           f"{_opt_ins()}.")
        return state
    if not trusted():
        raise UntrustedCheckpointError(
            f"{name}: refused to load: it holds {refused}, which is not among the objects fairseq "
            "checkpoints hold (rdrop_fairseq.safe_load.checkpoint_globals), and unpickling it could "
            f"run code.  If you trust this file, {_opt_ins()}."
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


def _numpy_made_not_plain(made: list) -> List[str]:
    """The dtypes of the numpy arrays and dtypes a load made that are not numpy's own of bools and numbers:
    the allow-list's constructors make only those, but the file can rebuild a dtype's state after."""
    dtypes = [obj.dtype if isinstance(obj, np.ndarray) else obj for obj in made]
    return [dtype.str for dtype in dtypes if dtype.hasobject or not _is_plain(dtype)]


def outside_allow_list(path) -> Optional[List[str]]:
    """Every global that the checkpoint at ``path`` names beyond the allow-list, read
    statically (nothing is unpickled); None for a file in torch's legacy format (torch <= 1.5,
    as the 2019 pretrained models), which only a load can check."""
    try:
        with _LOADING, _allowed(checkpoint_globals()):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError:  # not a zip file
        return None


def _has_call(text: str) -> bool:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any(isinstance(node, ast.Call) for node in ast.walk(tree))


def _config_values(state: Any, where: str = "", legacy: bool = False):
    """``(where, value, legacy)`` for every value of the checkpoint's saved config (``cfg``, or ``args``
    before fairseq 0.10) that is not a dict, list, tuple or ``argparse.Namespace``; ``legacy`` for the
    values of a Namespace, which fairseq converts to an OmegaConf config (``convert_namespace_to_omegaconf``)."""
    if where == "":
        for key in ("cfg", "args"):
            if isinstance(state, dict) and key in state:
                yield from _config_values(state[key], key, key == "args")
        return
    if isinstance(state, argparse.Namespace):
        state, legacy = vars(state), True
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _config_values(value, f"{where}.{key}", legacy)
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _config_values(value, f"{where}[{i}]", legacy)
    else:
        yield where, state, legacy


def _config_strings(state: Any):
    """``(where, value, legacy)`` for every string of the checkpoint's saved config."""
    return ((where, value, legacy) for where, value, legacy in _config_values(state) if isinstance(value, str))


def _config_values_not_data(state: Any) -> List[str]:
    """``where (type)`` for every value of the saved config that is not a string, a number, a bool or
    None, which is all fairseq's configs hold: fairseq formats such a value into a Hydra override, where
    a numpy array of text, say, becomes a string that no check here has read."""
    return [f"{where} ({type(value).__module__}.{type(value).__qualname__})" for where, value, _ in _config_values(state)
            if not isinstance(value, (str, int, float, bool, type(None)))]


# What fairseq's registries name (tasks, architectures, criteria, BPEs, ...): word characters.
_REGISTRY_NAME = re.compile(r"[A-Za-z0-9_][\w.\-]*")


def _registry_choices_not_names(state: Any) -> List[str]:
    """``where = value`` for every registry choice of a legacy config (an ``argparse.Namespace``) that is
    not a plain name: fairseq hands the choices of registries such as ``bpe`` and ``tokenizer`` to Hydra
    as config group overrides, so ``bpe='../../x'`` would compose ``x.yaml`` from wherever it points."""
    from fairseq.registry import REGISTRIES

    keys = {"task", "arch", *REGISTRIES}
    found, stack = [], [(key, state[key]) for key in ("cfg", "args") if isinstance(state, dict) and key in state]
    while stack:
        where, value = stack.pop()
        if isinstance(value, argparse.Namespace):
            for key, choice in vars(value).items():
                if key in keys and choice is not None and not (
                        isinstance(choice, str) and _REGISTRY_NAME.fullmatch(choice) and ".." not in choice):
                    found.append(f"{where}.{key} = {choice!r}")
            value = vars(value)
        if isinstance(value, dict):
            stack.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return found


def _code_in_config(state: Any) -> List[str]:
    """``where = value`` for every string of the checkpoint's saved config that calls a function
    if evaluated: fairseq evaluates some config strings (see :func:`config_eval`)."""
    return [f"{where} = {value!r}" for where, value, _ in _config_strings(state) if _has_call(value)]


def _interpolates(value: str) -> bool:
    """Whether OmegaConf would resolve an interpolation to read ``value`` (a resolver call such as
    ``${oc.env:X}``, or another key's value ``${a.b}``): its own parser says, so that escapes (``\\${``
    is a literal, ``\\\\${`` a backslash and an interpolation) are read as OmegaConf reads them.  A
    value it cannot parse counts: OmegaConf would fail on it anyway."""
    if "${" not in value:
        return False
    try:
        from omegaconf import grammar_parser
        from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    except ImportError:  # OmegaConf < 2.1: no grammar, and no escapes either
        return True
    try:
        nodes = [grammar_parser.parse(value)]
    except Exception:
        return True
    while nodes:
        node = nodes.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationContext):
            return True
        nodes.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return False


def _may_interpolate_once_converted(value: str) -> bool:
    """Whether a legacy ``args`` string could become an interpolation on its way to OmegaConf:
    fairseq evaluates the strings of fields that are not strings as Python literals (where
    ``'$' '{'`` and ``'\\x24{'`` are ``${``), and passes lists to Hydra as overrides (where an
    escaped ``\\${`` is a backslash and a live interpolation).  So any ``$`` there, before or
    after evaluation, counts."""
    if "$" in value:
        return True
    if "\\" not in value:
        return False
    try:
        parsed = config_literal(value)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        return False
    stack = [parsed]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "$" in item:
            return True
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
    return False


def _interpolations_in_config(state: Any) -> List[str]:
    """``where = value`` for every string of the checkpoint's saved config that OmegaConf would
    interpolate: fairseq makes an OmegaConf config of it, which resolves them when read."""
    return [f"{where} = {value!r}" for where, value, legacy in _config_strings(state)
            if _interpolates(value) or (legacy and _may_interpolate_once_converted(value))]


# Far above any config fairseq writes (a few levels of nesting, a few thousand values).
CONFIG_MAX_DEPTH = 64
CONFIG_MAX_VALUES = 1_000_000


def _config_shape_problem(state: Any) -> Optional[str]:
    """Why the saved config is not a tree of the size fairseq writes, or None.  A pickle can make one
    list an item of itself, or of another list twice over: forty lists, each holding the last one twice,
    read as 2^40 values by any walk over the config (the checks here, OmegaConf's copy).  Measured
    without walking it so: each list, dict or Namespace once, its expanded size and its height (the
    levels below it, however it is reached) from its items'."""
    def items(value):
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, dict):
            return list(value.values())
        return list(value) if isinstance(value, (list, tuple)) else None

    sizes, heights = {}, {}  # id of a container: the values it holds, expanded; the levels it spans
    for where, root in [(key, state[key]) for key in ("cfg", "args") if isinstance(state, dict) and key in state]:
        ancestors, stack = set(), [(root, False)]
        while stack:
            node, finished = stack.pop()
            children = items(node)
            if children is None or (not finished and id(node) in sizes):
                continue
            if finished:
                ancestors.discard(id(node))
                sizes[id(node)] = 1 + sum(sizes.get(id(child), 1) for child in children)
                heights[id(node)] = 1 + max((heights.get(id(child), 0) for child in children), default=0)
                if sizes[id(node)] > CONFIG_MAX_VALUES:
                    return f"its {where} holds more than {CONFIG_MAX_VALUES:,} values once expanded"
                if heights[id(node)] > CONFIG_MAX_DEPTH:
                    return f"its {where} is nested more than {CONFIG_MAX_DEPTH} levels deep"
                continue
            if id(node) in ancestors:
                return f"its {where} holds a list, dict or Namespace inside itself"
            ancestors.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return None


def _unsafe_content(state: Any, made: list) -> Optional[str]:
    """Why a checkpoint that unpickled with the allow-list is refused all the same, or None."""
    shape = _config_shape_problem(state)
    if shape:
        return (f"{shape}, which no config fairseq writes does: walks over it, as these checks and OmegaConf make, "
                "would not end in time or would exceed Python's recursion limit")
    dtypes = _numpy_made_not_plain(made)
    if dtypes:
        return (f"it holds numpy arrays or dtypes other than numpy's own of bools and numbers (dtypes "
                f"{', '.join(dtypes[:3])}), "
                "which no checkpoint fairseq writes holds: an array of Python objects would read pointers from the "
                "file, and a dtype rebuilt with fields or sub-arrays of its own reaches memory outside its array")
    values = _config_values_not_data(state)
    if values:
        return (f"its config holds values other than strings, numbers, lists and dicts ({', '.join(values[:3])}), "
                "which no config fairseq writes holds: fairseq formats them into Hydra overrides, which could "
                "call OmegaConf resolvers that no check here has read")
    choices = _registry_choices_not_names(state)
    if choices:
        return (f"its legacy config names registry choices that are not plain names ({'; '.join(choices[:3])}): "
                "fairseq hands them to Hydra as config groups, which would read YAML files from wherever they point")
    interpolations = _interpolations_in_config(state)
    if interpolations:
        return (f"its config holds OmegaConf interpolations, which are resolved when the value is read "
                f"({'; '.join(interpolations[:3])}): a resolver call such as oc.env would copy an environment "
                "variable into the config, the logs and every checkpoint saved from it, and interpolations of "
                "interpolations take exponential time.  fairseq saves configs with their interpolations resolved, "
                "so no checkpoint it wrote holds one")
    return None


def check(path) -> Tuple[str, str]:
    """Whether :func:`load` takes ``path`` without an opt-in ("loads"), refuses it
    ("refused") or cannot read it ("unreadable"), and a line that says why."""
    unreadable = f"{path}: not a checkpoint torch can read"
    try:
        names = outside_allow_list(path) or []
        if names:
            return "refused", f"{path}: refused: it names {', '.join(names)}, outside the allow-list"
        state, made = _load_allowed(path, map_location="cpu")
        reason = _unsafe_content(state, made)
        if reason:
            return "refused", f"{path}: refused: {reason}"
    except pickle.UnpicklingError as error:
        if _is_refusal(error) and not _is_torch_file(path, None):  # as load() says of it
            return "unreadable", f"{unreadable} (neither a zip file nor a pickle)"
        if _is_refusal(error):
            return "refused", f"{path}: refused: it holds {_refused_global(error)}, outside the allow-list"
        return "unreadable", f"{unreadable} ({error})"
    except Exception as error:  # a damaged file makes torch's unpickler fail in many ways
        return "unreadable", f"{unreadable} ({type(error).__name__}: {error})"
    # load() takes such a file: only the config values fairseq evaluates go through config_eval,
    # which refuses code; which ones it evaluates depends on the model, so this is a note, not a refusal
    code = _code_in_config(state)
    if code:
        return "loads", (f"{path}: loads with the allow-list; note: these config values are code, which fairseq "
                         f"refuses to evaluate unless you opt in, should it evaluate them: {'; '.join(code)}")
    return "loads", f"{path}: loads with the allow-list"


def _extract(archive_path: str, dest: str) -> str:
    """Extract a tar archive into ``dest``; the folder that holds what it extracted.  Every member must
    be a file or a folder with a relative name and no ``..``: a model archive needs no links, devices or
    absolute paths, and refusing them keeps extraction inside ``dest`` even on Pythons whose tarfile
    "data" filter (used as well, where there is one) can be bypassed.  Nor sparse files, whose size the
    archive states freely, unbacked by its own (a 45 kB archive can hold a 1 GB dict.txt that fairseq reads
    into memory whole)."""
    with tarfile.open(archive_path, "r:*") as archive:
        members = archive.getmembers()
        for member in members:
            parts = member.name.replace("\\", "/").split("/")
            if (not (member.isfile() or member.isdir()) or member.issparse() or member.name.startswith("/")
                    or ".." in parts):
                raise ValueError(f"{archive_path}: refused to extract the model archive: its member "
                                 f"{member.name!r} is not a plain file or folder inside the archive")
        try:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(dest, members=members, filter="data")
            else:
                archive.extractall(dest, members=members)
        except getattr(tarfile, "FilterError", ()) as error:  # a Python without the filters has no FilterError
            raise ValueError(f"{archive_path}: refused to extract the model archive: {error}") from None
    names = [os.path.normpath(member.name) for member in members]
    top = os.path.join(dest, os.path.commonpath(names)) if names else dest
    return top if os.path.isdir(top) else dest


def load_archive_file(archive_file):
    """``fairseq.file_utils.load_archive_file`` (``from_pretrained``'s), extracting safely.

    A folder is returned as it is.  A downloaded archive is replaced in fairseq's cache by
    the folder it holds, as fairseq does; an archive of the user's own is extracted into a
    temporary folder that is removed at exit, and kept (fairseq deletes it)."""
    from fairseq import file_utils

    try:
        resolved = file_utils.cached_path(archive_file, cache_dir=None)
    except EnvironmentError:
        logger.info("%s is neither a known archive name nor an existing path or URL", archive_file)
        return None
    if os.path.isdir(resolved):
        return resolved
    dest = tempfile.mkdtemp(prefix="rdrop-model-archive-")
    if os.path.exists(str(archive_file)):  # the user's own archive (a str or a Path), not a download
        atexit.register(shutil.rmtree, dest, ignore_errors=True)
        logger.info("extracting the model archive %s into %s", archive_file, dest)
        return _extract(resolved, dest)
    try:
        top = _extract(resolved, dest)
        os.remove(resolved)
        shutil.move(top, resolved)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return resolved
