"""Make fairseq-fixed (fairseq main) run on current torch and numpy.

* torch >= 2.6 loads with ``weights_only=True`` by default, which rejects fairseq
  checkpoints (they pickle the config, meters and iterator state).  Only fairseq's
  own checkpoint and inter-worker loads are switched back to full unpickling, the
  behaviour they were written for; every other ``torch.load`` in the process keeps
  torch's safer default.
* numpy 2 removed ``np.compat``, which fairseq's datasets still use for ``long``.
* After a non-finite step fairseq re-runs the batch under its ``NanDetector`` to say
  where the NaN came from; the backward hooks it registers on every module make
  current torch raise ``StopIteration`` inside the transformer encoder, hiding the
  real ``FloatingPointError``.  The detector keeps its forward hooks only.
"""
import functools
import types

import numpy as np
import torch


@functools.wraps(torch.load)
def _fairseq_torch_load(*args, **kwargs):
    kwargs.setdefault("weights_only", False)
    return torch.load(*args, **kwargs)


class _TorchForFairseq(types.ModuleType):
    """``torch`` as seen from one fairseq module: the same, except ``load``."""

    load = staticmethod(_fairseq_torch_load)

    def __getattr__(self, name):
        return getattr(torch, name)


def _patch_checkpoint_loading():
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as distributed_utils

    for module in (checkpoint_utils, distributed_utils):
        if not isinstance(module.torch, _TorchForFairseq):
            module.torch = _TorchForFairseq("torch")


def _patch_numpy_compat():
    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int, unicode=str, basestring=str)


def _forward_hooks_only(self, module):
    if self.forward:
        self.fhooks.append(module.register_forward_hook(self.fhook_fn))


def _patch_nan_detector():
    from fairseq import nan_detector

    nan_detector.NanDetector.add_hooks = _forward_hooks_only


def apply():
    _patch_numpy_compat()
    _patch_checkpoint_loading()
    _patch_nan_detector()
