from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from .rdrop_task import RDropTaskFields, RDropTaskMixin


@dataclass
class RDropLanguageModelingConfig(LanguageModelingConfig, RDropTaskFields):
    pass


@register_task("rdrop_language_modeling", dataclass=RDropLanguageModelingConfig)
class RDropLanguageModelingTask(RDropTaskMixin, LanguageModelingTask):
    """``language_modeling`` with R-Drop training steps; evaluation and eval-lm are unchanged."""
