"""When and how the sub-model passes of a training step are made.

This is the only place that decides it.  The criteria ask :class:`SubModelPasses`
how many copies a step uses and get one network output back whose batch dimension
holds the copies one after another; the R-Drop tasks build it from their options.
The sample is never modified: the repeated batch is a new set of tensors.
"""
import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Tuple

import torch
from fairseq.modules import FairseqDropout
from torch import nn


@dataclass(frozen=True)
class SubModelPasses:
    """R-Drop's sub-model schedule (paper §2 and the studies of §4.2-§4.4).

    copies: sub-models m per R-Drop step.
    every_k_steps: R-Drop on updates with ``update_num % k == 0``; plain steps otherwise.
    dropout_rates: one dropout probability per copy, or empty to keep the model's.
    """

    copies: int = 2
    every_k_steps: int = 1
    dropout_rates: Tuple[float, ...] = ()

    def __post_init__(self):
        if self.copies < 2:
            raise ValueError(f"--rdrop-copies must be at least 2, got {self.copies}")
        if self.every_k_steps < 1:
            raise ValueError(f"--rdrop-every-k-steps must be at least 1, got {self.every_k_steps}")
        if self.dropout_rates:
            if len(self.dropout_rates) != self.copies:
                raise ValueError(
                    f"--rdrop-dropout-rates gives {len(self.dropout_rates)} rates for "
                    f"--rdrop-copies {self.copies}; give one rate per copy"
                )
            bad = [r for r in self.dropout_rates if not 0.0 <= r < 1.0]
            if bad:
                raise ValueError(f"--rdrop-dropout-rates must lie in [0, 1), got {bad}")

    def copies_for(self, training: bool, update_num: Optional[int] = None) -> int:
        """Copies for one step: m on R-Drop steps, 1 in evaluation and on skipped steps."""
        if not training:
            return 1
        if update_num is not None and update_num % self.every_k_steps:
            return 1
        return self.copies

    def forward(self, model: nn.Module, net_input: dict, copies: int):
        """Run ``copies`` sub-models; the output's batch holds the copies in order."""
        if copies == 1:
            return model(**net_input)
        if not self.dropout_rates:
            return model(**repeat_batch(net_input, copies))
        outputs = []
        for rate in self.dropout_rates:
            with dropout_rate(model, rate):
                outputs.append(model(**net_input))
        return (torch.cat([out[0] for out in outputs]),) + tuple(outputs[0][1:])


def repeat_batch(value: Any, copies: int) -> Any:
    """A new batch with every batch-first tensor repeated ``copies`` times along dim 0."""
    if torch.is_tensor(value):
        return value.repeat(copies, *([1] * (value.dim() - 1))) if value.dim() else value
    if isinstance(value, dict):
        return {key: repeat_batch(item, copies) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(repeat_batch(item, copies) for item in value)
    return value


def dropout_modules(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if isinstance(module, (FairseqDropout, nn.modules.dropout._DropoutNd)):
            yield module


def has_active_dropout(model: nn.Module) -> bool:
    return any(module.p > 0 for module in dropout_modules(model))


def main_dropout(model: nn.Module) -> Optional[float]:
    """The model's ``--dropout``, where its config says it."""
    for holder in (getattr(model, "cfg", None), getattr(model, "args", None)):
        rate = getattr(holder, "dropout", None)
        if isinstance(rate, (int, float)):
            return float(rate)
    return None


@contextlib.contextmanager
def dropout_rate(model: nn.Module, rate: float):
    """Temporarily set the main dropout (the modules at ``--dropout``) to ``rate``.

    Attention and activation dropout keep their own rates.  Without a known
    ``--dropout``, every dropout module with a non-zero rate is set.  The original
    rates come back on exit, also when the body raises.
    """
    base = main_dropout(model)
    changed: Sequence[Tuple[nn.Module, float]] = [
        (module, module.p)
        for module in dropout_modules(model)
        if (module.p == base if base is not None else module.p > 0)
    ]
    try:
        for module, _ in changed:
            module.p = rate
        yield
    finally:
        for module, original in changed:
            module.p = original
