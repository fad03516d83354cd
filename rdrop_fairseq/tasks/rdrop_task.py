"""What the R-Drop tasks share: their options and the R-Drop training step."""
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import List

from fairseq.tasks import LegacyFairseqTask

from ..criterions.rdrop_criterion import RDropCriterionMixin
from ..safe_load import TrustCheckpointsFields
from ..sub_models import SubModelPasses


@dataclass
class RDropTaskFields(TrustCheckpointsFields):
    rdrop_copies: int = field(
        default=2, metadata={"help": "sub-models m per R-Drop step (paper §4.3)"}
    )
    rdrop_every_k_steps: int = field(
        default=1,
        metadata={"help": "apply R-Drop on every k-th update only; the others are plain steps (paper §4.2)"},
    )
    rdrop_dropout_rates: List[float] = field(
        default_factory=list,
        metadata={
            "help": "one dropout rate per sub-model, e.g. '[0.1,0.3]', replacing --dropout "
            "in that sub-model's pass (paper §4.4); empty keeps --dropout"
        },
    )


def variant_flags(passes: SubModelPasses) -> List[str]:
    """The task options (``--rdrop-copies``, ...) whose values differ from their defaults."""
    default = SubModelPasses()
    return [f"--rdrop-{field.name.replace('_', '-')}" for field in dataclasses.fields(passes)
            if field.compare and getattr(passes, field.name) != getattr(default, field.name)]


class RDropTaskMixin:
    """Mixed in before a fairseq task.  Its train_step is fairseq's own, with the
    update number handed to the R-Drop criterion so that the sub-model schedule
    (:class:`~rdrop_fairseq.sub_models.SubModelPasses`) can follow it."""

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.sub_model_passes = SubModelPasses(
            copies=cfg.rdrop_copies,
            every_k_steps=cfg.rdrop_every_k_steps,
            dropout_rates=tuple(float(r) for r in (cfg.rdrop_dropout_rates or ())),
        )

    def build_criterion(self, cfg, from_checkpoint=False):
        # LegacyFairseqTask (language_modeling) takes no from_checkpoint argument
        if isinstance(self, LegacyFairseqTask):
            criterion = super().build_criterion(cfg)
        else:
            criterion = super().build_criterion(cfg, from_checkpoint)
        flags = variant_flags(self.sub_model_passes)
        if flags and not from_checkpoint:
            named = f"{' and '.join(flags)} {'needs' if len(flags) == 1 else 'need'}"
            if not isinstance(criterion, RDropCriterionMixin):
                raise ValueError(f"{named} an R-Drop --criterion, not "
                                 f"{getattr(cfg, '_name', type(criterion).__name__)}")
            if criterion.rdrop_alpha == 0:
                raise ValueError(f"{named} --rdrop-alpha above 0: with --rdrop-alpha 0 there is one pass and no KL term")
        return criterion

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        # Activation checkpointing re-runs a layer's forward in the backward pass, after the
        # sub-model's dropout rate is gone: its gradient would come from other masks.
        if self.sub_model_passes.dropout_rates and any(
                hasattr(module, "precheckpoint_forward") for module in model.modules()):
            raise ValueError("--rdrop-dropout-rates cannot be combined with --checkpoint-activations or "
                             "--offload-activations: the recomputed layers would not use the sub-model's rate")
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if isinstance(criterion, RDropCriterionMixin):
            criterion = functools.partial(criterion, update_num=update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
