from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

from .rdrop_criterion import ALPHA_HELP, CHUNK_HELP, RDropCriterionMixin


@dataclass
class RDropLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    rdrop_alpha: float = field(default=5.0, metadata={"help": ALPHA_HELP})
    rdrop_chunk_tokens: int = field(default=0, metadata={"help": CHUNK_HELP})


@register_criterion(
    "rdrop_label_smoothed_cross_entropy", dataclass=RDropLabelSmoothedCrossEntropyConfig
)
class RDropLabelSmoothedCrossEntropyCriterion(
    RDropCriterionMixin, LabelSmoothedCrossEntropyCriterion
):
    """Label-smoothed cross-entropy of every sub-model plus alpha times their KL."""

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        rdrop_alpha=5.0,
        rdrop_chunk_tokens=0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.init_rdrop(task, rdrop_alpha, rdrop_chunk_tokens)
