from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from .rdrop_task import RDropTaskFields, RDropTaskMixin


@dataclass
class RDropSentencePredictionConfig(SentencePredictionConfig, RDropTaskFields):
    pass


@register_task("rdrop_sentence_prediction", dataclass=RDropSentencePredictionConfig)
class RDropSentencePredictionTask(RDropTaskMixin, SentencePredictionTask):
    """``sentence_prediction`` with the R-Drop schedule options (--rdrop-copies,
    --rdrop-every-k-steps, --rdrop-dropout-rates); evaluation is unchanged."""
