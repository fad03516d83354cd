from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig

from .rdrop_criterion import ALPHA_HELP, CHUNK_HELP, RDropCriterionMixin


@dataclass
class RDropCrossEntropyConfig(CrossEntropyCriterionConfig):
    rdrop_alpha: float = field(default=1.0, metadata={"help": ALPHA_HELP})
    rdrop_chunk_tokens: int = field(default=0, metadata={"help": CHUNK_HELP})


@register_criterion("rdrop_cross_entropy", dataclass=RDropCrossEntropyConfig)
class RDropCrossEntropyCriterion(RDropCriterionMixin, CrossEntropyCriterion):
    """Cross-entropy of every sub-model plus alpha times their KL (language models, paper §3.4)."""

    def __init__(self, task, sentence_avg, rdrop_alpha=1.0, rdrop_chunk_tokens=0):
        super().__init__(task, sentence_avg)
        self.init_rdrop(task, rdrop_alpha, rdrop_chunk_tokens)
