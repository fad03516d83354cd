from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .rdrop_task import RDropTaskFields, RDropTaskMixin


@dataclass
class RDropTranslationConfig(TranslationConfig, RDropTaskFields):
    pass


@register_task("rdrop_translation", dataclass=RDropTranslationConfig)
class RDropTranslationTask(RDropTaskMixin, TranslationTask):
    """``translation`` with R-Drop training steps; evaluation and generation are unchanged."""
