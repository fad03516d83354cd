"""When and how the sub-model passes of a training step are made.

This is the only place that decides it.  The criteria ask :class:`SubModelPasses`
how many copies a step uses and get one network output back whose batch dimension
holds the copies interleaved: copy ``k`` of sample ``b`` is row ``b * copies + k``
(the layout :func:`~rdrop_fairseq.rdrop_loss.rdrop_loss` takes).  Interleaving keeps
fairseq's batches sorted by decreasing source length, which its LSTM encoder needs
(``pack_padded_sequence(..., enforce_sorted=True)``).  The R-Drop tasks build the
schedule from their options.  The sample is never modified: the repeated batch is a
new set of tensors.
"""
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from fairseq.modules import AdaptiveSoftmax, FairseqDropout, LayerDropModuleList, MultiheadAttention
from fairseq.modules.quant_noise import quant_noise as _quant_noise
from torch import nn

logger = logging.getLogger(__name__)


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
    # set once the reason for separate passes has been logged
    _logged: List[str] = field(default_factory=list, init=False, compare=False, repr=False)

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
        """Run ``copies`` sub-models; ``output[0]`` holds them interleaved (row ``b * copies + k``).

        One pass over the repeated batch, except where a copy must differ from the
        others in more than its dropout masks: with per-copy dropout rates that differ,
        and with active LayerDrop or quant-noise, which draw the dropped layers or weight
        blocks once per pass.  Each copy then gets a pass of its own.  The other entries
        of the output are those of the first pass in that case.
        """
        if copies == 1:
            return model(**net_input)
        layerdrop, quant_noise = drawn_per_pass(model)
        if layerdrop and _ddp_finding_unused_parameters(model):
            raise ValueError(
                "R-Drop with LayerDrop needs --ddp-backend legacy_ddp: it makes one forward pass per "
                "sub-model, and PyTorch's DistributedDataParallel with --find-unused-parameters (which "
                "LayerDrop needs under --ddp-backend pytorch_ddp) counts only the last pass's layers as "
                "used, then fails when the others receive gradients"
            )
        if len(set(self.dropout_rates)) > 1:
            outputs = []
            for rate in self.dropout_rates:
                with dropout_rate(model, rate):
                    outputs.append(model(**net_input))
            return interleave_outputs(outputs)
        if layerdrop:
            self._log_once(
                "layerdrop",
                "LayerDrop is active: R-Drop makes one forward pass per sub-model, so that "
                "each sub-model drops its own layers (one pass over the repeated batch would "
                "share them and the sub-models would differ only in their dropout masks)",
            )
        if quant_noise:
            self._log_once(
                "quant-noise",
                "quant-noise is active: R-Drop makes one forward pass per sub-model, so that each "
                "sub-model draws its own noised weight blocks",
            )
        # equal per-copy rates are one rate: the repeated batch needs no pass per copy
        with dropout_rate(model, self.dropout_rates[0]) if self.dropout_rates else contextlib.nullcontext():
            if layerdrop or quant_noise:
                return interleave_outputs([model(**net_input) for _ in range(copies)])
            return model(**repeat_batch(net_input, copies))

    def copies_can_differ(self, model: nn.Module) -> bool:
        """Whether the sub-models of a training step can differ at all: some dropout is
        active in their passes (with per-copy rates, the main dropout at those rates), or
        LayerDrop or quant-noise."""
        overridden = {id(module) for module in main_dropout_modules(model)} if self.dropout_rates else set()
        return (
            any(rate > 0 for rate in self.dropout_rates)
            or any(module.p > 0 for module in dropout_modules(model) if id(module) not in overridden)
            or any(drawn_per_pass(model))
        )

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.append(key)
            logger.info(message)


def _ddp_finding_unused_parameters(model: nn.Module) -> bool:
    """Whether ``model`` is (fairseq's proxy around) PyTorch's DDP with ``find_unused_parameters``."""
    while isinstance(model, nn.Module):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return bool(model.find_unused_parameters)
        model = model._modules.get("module")
    return False


def interleave_outputs(outputs: Sequence[tuple]) -> tuple:
    """Separate passes' outputs as one, ``output[0]`` interleaved as a repeated batch gives it."""
    first = torch.stack([out[0] for out in outputs], dim=1).flatten(0, 1)
    return (first,) + tuple(outputs[0][1:])


def repeat_batch(value: Any, copies: int) -> Any:
    """A new batch with every tensor of one or more dimensions (in a fairseq
    ``net_input`` all are batch-first) repeated ``copies`` times along dim 0,
    interleaved: row ``b`` becomes rows ``b * copies`` to ``b * copies + copies - 1``."""
    if torch.is_tensor(value):
        return value.repeat_interleave(copies, dim=0) if value.dim() else value
    if isinstance(value, dict):
        return {key: repeat_batch(item, copies) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(repeat_batch(item, copies) for item in value)
    return value


_DROPOUT_TYPES = (FairseqDropout, nn.modules.dropout._DropoutNd)


def dropout_modules(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if isinstance(module, _DROPOUT_TYPES):
            yield module


def drawn_per_pass(model: nn.Module) -> Tuple[bool, bool]:
    """Whether a forward pass of ``model`` now draws, once for its whole batch, (the layers it drops:
    fairseq's LayerDrop, the weight blocks it noises: ``--quant-noise-pq``, whose pre-forward hook fairseq
    installs only with p > 0 and which acts only in training).  One walk over the modules: it runs on
    every training step."""
    layerdrop = quant_noise = False
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, LayerDropModuleList):
            layerdrop = layerdrop or module.p > 0
        elif module._forward_pre_hooks and not quant_noise:
            quant_noise = any(getattr(hook, "__module__", None) == _quant_noise.__module__
                              for hook in module._forward_pre_hooks.values())
    return layerdrop, quant_noise


def main_dropout(model: nn.Module) -> Optional[float]:
    """The model's ``--dropout``, where its config (or its encoder's or decoder's) says it.

    fairseq's ``transformer_lm`` keeps no config of its own; its decoder does.
    """
    holders = []
    for owner in (model, getattr(model, "encoder", None), getattr(model, "decoder", None)):
        holders += [getattr(owner, "cfg", None), getattr(owner, "args", None)]
    for holder in holders:
        rate = getattr(holder, "dropout", None)
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            return float(rate)
    return None


# Attribute names of fairseq's main dropout: the ``dropout_module`` of the transformer,
# lightconv and fconv encoders, decoders and layers; the LSTM's input and output dropout
# (``--encoder-dropout-in`` ... ``--decoder-dropout-out``, which default to ``--dropout``;
# no LSTM module uses ``--dropout`` itself).
_MAIN_DROPOUT_NAMES = frozenset({"dropout_module", "dropout_in_module", "dropout_out_module"})
# Attribute names of dropout with an option of its own: ``--activation-dropout`` /
# ``--relu-dropout`` (transformer, lightconv), lightconv's ``--input-dropout`` and the
# ``--weight-dropout`` of lightweight and dynamic convolutions.
_OTHER_DROPOUT_NAMES = frozenset({
    "activation_dropout_module", "relu_dropout_module", "input_dropout_module", "weight_dropout_module",
})


def _has_own_dropout(module: nn.Module) -> bool:
    """Whether the dropout inside ``module`` has an option of its own, not ``--dropout``:
    attention dropout (``--attention-dropout``) in fairseq's attention modules, the
    ``--adaptive-softmax-dropout`` of an adaptive softmax, and the ``--pooler-dropout`` of
    a BART or RoBERTa classification head."""
    name = type(module).__name__
    return (
        isinstance(module, (MultiheadAttention, AdaptiveSoftmax))
        or "Attention" in name
        or "ClassificationHead" in name
    )


def main_dropout_modules(model: nn.Module) -> List[nn.Module]:
    """The dropout modules that apply ``model``'s main dropout (``--dropout``).

    Modules are told apart by what they are, not by their rate, as attention and
    activation dropout often equal ``--dropout`` (0.1 in RoBERTa and BART):

    * main dropout: a dropout module named ``dropout_module`` (transformer, lightconv,
      fconv), ``dropout_in_module`` or ``dropout_out_module`` (LSTM), whatever its rate,
      so one set to a rate of its own (per layer, or the LSTM's ``--encoder-dropout-in``
      and the like) is main dropout too;
    * not main dropout: everything inside an attention module, an adaptive softmax or a
      classification head (see :func:`_has_own_dropout`), and modules named as in
      ``_OTHER_DROPOUT_NAMES`` (activation, input and weight dropout);
    * any other dropout module (a model that is not fairseq's) by its rate: main where it
      equals the model's ``--dropout`` (:func:`main_dropout`), or, with no known
      ``--dropout``, where it is non-zero.

    The dropout between the layers of a multi-layer ``nn.LSTM`` is a number, not a module,
    and is not among them.
    """
    base = main_dropout(model)
    found: List[nn.Module] = []
    seen = set()

    def visit(module: nn.Module, own_rate: bool) -> None:
        for name, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if isinstance(child, _DROPOUT_TYPES):
                if own_rate or name in _OTHER_DROPOUT_NAMES:
                    continue
                if name in _MAIN_DROPOUT_NAMES or (child.p == base if base is not None else child.p > 0):
                    found.append(child)
            else:
                visit(child, own_rate or _has_own_dropout(child))

    visit(model, False)
    return found


@contextlib.contextmanager
def dropout_rate(model: nn.Module, rate: float):
    """Temporarily set the main dropout (:func:`main_dropout_modules`) to ``rate``.

    Attention, activation and the other dropout with options of their own keep their
    rates.  The original rates come back on exit, also when the body raises.
    """
    changed: Sequence[Tuple[nn.Module, float]] = [(module, module.p) for module in main_dropout_modules(model)]
    try:
        for module, _ in changed:
            module.p = rate
        yield
    finally:
        for module, original in changed:
            module.p = original
