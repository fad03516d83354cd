"""Make fairseq-fixed (fairseq main) run on current torch and numpy.

* torch >= 2.6 loads with ``weights_only=True`` by default, which rejects fairseq
  checkpoints: besides tensors they pickle a few data classes (``argparse.Namespace``,
  numpy arrays).  fairseq's checkpoint loads go through :mod:`rdrop_fairseq.safe_load`,
  which allows exactly those and refuses anything else unless the user opts in
  (``RDROP_TRUST_CHECKPOINTS=1``, or a task's ``--trust-checkpoints``, honoured when
  ``fairseq.tasks.setup_task`` sets up a task that has it and the command line says it).
  fairseq's inter-worker broadcasts (``distributed.utils``) keep full unpickling: their
  bytes come from a peer process of the same job, pickled from objects it already holds
  (a checkpoint it loaded through the safe loader, or the workers' own state), and they
  carry ``OmegaConf`` configs and fairseq's own placeholders.  A process-group peer is
  trusted as torch.distributed trusts it (``broadcast_object_list`` unpickles too).
  The speech-to-text ``xm_transformer`` loads the checkpoint its config names through the safe
  loader as well (:data:`CHECKPOINT_LOAD_MODULES`).  Every other ``torch.load`` in the process
  keeps torch's own default.  ``from_pretrained``
  extracts model archives with :func:`rdrop_fairseq.safe_load.load_archive_file`.
* fairseq evaluates some config strings with ``eval`` when it builds a model, criterion
  or optimizer, and those strings may come from a checkpoint's saved config.  In each
  module that does (:data:`CONFIG_EVAL_MODULES`), ``eval`` is
  :func:`rdrop_fairseq.safe_load.config_eval`, which evaluates literals only unless the
  user opted in.  Command-line values go through it too; fairseq's own are all literals.
* numpy 2 removed ``np.compat``, which fairseq's datasets still use for ``long``.
* After a non-finite step fairseq re-runs the batch under its ``NanDetector`` to say
  where the NaN came from; the backward hooks it registers on every module make
  current torch raise ``StopIteration`` inside the transformer encoder, hiding the
  real ``FloatingPointError``.  The detector keeps its forward hooks only.
* fairseq main's ``data_utils.batch_by_size`` drops the last batch when its size is
  not a multiple of ``required_batch_size_multiple`` (8 by default), so
  fairseq-generate skipped the last ``n % 8`` sentences of a test set (the longest)
  and validation the last ones of the valid set.  The batch is kept, as in fairseq 0.12.2.
* ``--no-repeat-ngram-size`` (``NGramRepeatBlock``) blocks repeated n-grams only through
  fairseq's CUDA extension, which a pip install does not build: its Python fallback
  compares the last columns of the whole token buffer, padding beyond the current step,
  and so blocks nothing (fairseq issue #4709).  The fallback is
  :func:`block_repeated_ngrams`, which does what the extension does.
* fairseq prefetches batches in daemon threads (``data.iterators.BackgroundConsumer``) that
  are still running when fairseq-train returns.  Python before 3.14 ends a daemon thread
  that wakes during interpreter shutdown with ``pthread_exit``; inside a torch op, which
  releases the GIL, that aborts the process ("terminate called without an active
  exception", exit status 134) after the checkpoints are written, so a script running
  under ``set -e`` stops.  At exit the prefetch threads are told to stop and are joined
  first (:func:`stop_prefetch_threads`).
"""
import atexit
import functools
import importlib
import logging
import math
import queue
import threading
import time
import types

import numpy as np
import torch

from . import safe_load


@functools.wraps(torch.load)
def _load_from_peer(*args, **kwargs):
    kwargs.setdefault("weights_only", False)
    return torch.load(*args, **kwargs)


class _TorchWithLoad(types.ModuleType):
    """``torch`` as seen from one fairseq module: the same, except ``load``."""

    def __init__(self, load):
        super().__init__("torch")
        self.load = load

    def __getattr__(self, name):
        return getattr(torch, name)


def _setup_task_honouring_trust(setup_task):
    @functools.wraps(setup_task)
    def setup_task_and_honour_trust(cfg, **kwargs):
        safe_load.honour_task_option(cfg, from_checkpoint=kwargs.get("from_checkpoint", False))
        return setup_task(cfg, **kwargs)

    setup_task_and_honour_trust.honours_trust = True
    return setup_task_and_honour_trust


# fairseq's modules that torch.load a checkpoint (tests/test_compat.py lists every torch.load in the
# installed fairseq and fails on one in a module not here or in its list of data-file loads).
CHECKPOINT_LOAD_MODULES = (
    "fairseq.checkpoint_utils",
    "fairseq.models.speech_to_text.xm_transformer",  # load_pretrained_decoder_from, a path in the model config
)


def _patch_checkpoint_loading():
    from fairseq import file_utils, tasks
    from fairseq.distributed import utils as distributed_utils

    file_utils.load_archive_file = safe_load.load_archive_file

    for name in CHECKPOINT_LOAD_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency of a model is missing: nothing to build with it
            if name == "fairseq.checkpoint_utils":
                raise
            continue
        if not isinstance(module.torch, _TorchWithLoad):
            module.torch = _TorchWithLoad(safe_load.load)
    if not isinstance(distributed_utils.torch, _TorchWithLoad):
        distributed_utils.torch = _TorchWithLoad(_load_from_peer)
    if not getattr(tasks.setup_task, "honours_trust", False):
        tasks.setup_task = _setup_task_honouring_trust(tasks.setup_task)


# fairseq's modules that call eval() on config values (fairseq 0.12 / fairseq-fixed 0.12.3;
# tests/test_compat.py lists the calls in the installed fairseq and fails on one not here).
# The examples/ models are not imported unless a --user-dir points at them.
CONFIG_EVAL_MODULES = (
    "fairseq.utils",  # eval_str_list, eval_str_dict, eval_bool: adaptive_softmax_cutoff and others
    "fairseq.criterions.ctc",
    "fairseq.data.audio.raw_audio_dataset",
    "fairseq.models.fconv",
    "fairseq.models.fconv_lm",
    "fairseq.models.fconv_self_att",
    "fairseq.models.hubert.hubert",
    "fairseq.models.lightconv_lm",
    "fairseq.models.speech_to_text.s2t_wav_transformer",
    "fairseq.models.transformer_lm",
    "fairseq.models.wav2vec.wav2vec",
    "fairseq.models.wav2vec.wav2vec2",
    "fairseq.optim.adafactor",
    "fairseq.optim.adam",
    "fairseq.optim.adamax",
    "fairseq.optim.cpu_adam",
    "fairseq.optim.fused_lamb",
)


def _patch_config_eval():
    for name in CONFIG_EVAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency of that module is missing: nothing to build with it
            continue
        module.eval = safe_load.config_eval


def _patch_numpy_compat():
    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int, unicode=str, basestring=str)


def _forward_hooks_only(self, module):
    if self.forward:
        self.fhooks.append(module.register_forward_hook(self.fhook_fn))


def _patch_nan_detector():
    from fairseq import nan_detector

    nan_detector.NanDetector.add_hooks = _forward_hooks_only


def _keeps_the_last_batch(batch_by_size):
    @functools.wraps(batch_by_size)
    def every_index_batched(indices, *args, **kwargs):
        batches = batch_by_size(indices, *args, **kwargs)
        placed = sum(len(batch) for batch in batches)
        # the batches are consecutive runs of ``indices``: what is missing is the tail
        fixed_shapes = kwargs.get("fixed_shapes", args[5] if len(args) > 5 else None)
        if fixed_shapes is None and placed < len(indices):
            batches = list(batches) + [np.asarray(indices[placed:], dtype=np.int64)]
        return batches

    every_index_batched.keeps_the_last_batch = True
    return every_index_batched


def _patch_batch_by_size():
    from fairseq.data import data_utils

    if not getattr(data_utils.batch_by_size, "keeps_the_last_batch", False):
        data_utils.batch_by_size = _keeps_the_last_batch(data_utils.batch_by_size)


def block_repeated_ngrams(tokens, lprobs, n: int, step: int):
    """Forbid, in each row of ``lprobs``, the tokens that would repeat an ``n``-gram of the row's
    hypothesis so far, ``tokens[:, :step + 1]`` (its start symbol included)."""
    if n < 1 or step + 1 < n:
        return lprobs
    seen = tokens[:, :step + 1].unfold(1, n, 1)  # (rows, step + 2 - n, n): every n-gram so far
    suffix = tokens[:, step + 2 - n:step + 1].unsqueeze(1)  # the n - 1 tokens a new n-gram starts with
    rows, starts = (seen[:, :, :-1] == suffix).all(dim=-1).nonzero(as_tuple=True)
    lprobs[rows, seen[rows, starts, -1]] = -math.inf
    return lprobs


def _no_repeat_ngram(self, tokens, lprobs, bsz, beam_size, step):
    return block_repeated_ngrams(tokens, lprobs, self.no_repeat_ngram_size, step)


def _patch_ngram_blocking():
    from fairseq.ngram_repeat_block import NGramRepeatBlock

    NGramRepeatBlock._no_repeat_ngram = _no_repeat_ngram


_EXITING = threading.Event()
PREFETCH_STOP_TIMEOUT_S = 60.0


def _until_exit(batches):
    """``batches``, ending early once the interpreter is exiting: checked before each batch,
    so that a prefetch thread is never inside a torch op when shutdown begins."""
    batches = iter(batches)
    while not _EXITING.is_set():
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch


def stop_prefetch_threads(timeout_s: float = PREFETCH_STOP_TIMEOUT_S):
    """Stop fairseq's batch prefetch threads and join them (registered with :mod:`atexit`)."""
    _EXITING.set()
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if not getattr(type(thread), "stops_at_exit", False):
            continue
        while thread.is_alive() and time.monotonic() < deadline:
            try:  # make room for the batch, or the end marker, that it may be waiting to queue
                while True:
                    thread._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


def _patch_prefetch_threads():
    from fairseq.data import iterators

    if getattr(iterators.BackgroundConsumer, "stops_at_exit", False):
        return

    class BackgroundConsumer(iterators.BackgroundConsumer):
        stops_at_exit = True

        def __init__(self, batch_queue, source, max_len, cuda_device):
            super().__init__(batch_queue, _until_exit(source), max_len, cuda_device)

    iterators.BackgroundConsumer = BackgroundConsumer
    atexit.register(stop_prefetch_threads)


def _quiet_tensorboardx_hint():
    """fairseq's text-to-speech task logs "Please install tensorboardX" when it is imported, in every process
    that imports fairseq's tasks; only that task uses it (--tensorboard-logdir tries torch's own writer first).
    This quiets the processes that import the plugin before fairseq's tasks (the recipes, the quickstart), not
    fairseq-train, which imports them before its --user-dir."""
    logging.getLogger("fairseq.tasks.text_to_speech").addFilter(
        lambda record: "tensorboardX" not in record.getMessage())


def apply():
    _quiet_tensorboardx_hint()
    _patch_numpy_compat()
    _patch_checkpoint_loading()
    _patch_config_eval()
    _patch_nan_detector()
    _patch_batch_by_size()
    _patch_ngram_blocking()
    _patch_prefetch_threads()
