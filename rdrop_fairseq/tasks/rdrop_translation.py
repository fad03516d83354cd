import glob
import os
from dataclasses import dataclass

from fairseq import utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .rdrop_task import RDropTaskFields, RDropTaskMixin


@dataclass
class RDropTranslationConfig(TranslationConfig, RDropTaskFields):
    pass


@register_task("rdrop_translation", dataclass=RDropTranslationConfig)
class RDropTranslationTask(RDropTaskMixin, TranslationTask):
    """``translation`` with R-Drop training steps; evaluation and generation are unchanged.

    It also names the data folder when it is missing or not binarised, and refuses a
    checkpoint whose dictionaries differ in size from the data's, naming the file."""

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils.split_paths(cfg.data) if cfg.data else []
        if paths and "://" in paths[0]:  # fairseq's PathManager reads remote URIs: it checks those itself
            return super().setup_task(cfg, **kwargs)
        if not paths or not os.path.isdir(paths[0]):
            raise FileNotFoundError(f"data directory {paths[0] if paths else cfg.data!r} does not exist")
        if not glob.glob(os.path.join(paths[0], "dict.*.txt")):
            raise FileNotFoundError(
                f"data directory {paths[0]} holds no dict.*.txt: it is not a fairseq-preprocess output"
            )
        return super().setup_task(cfg, **kwargs)

    def _dictionaries(self):
        return (("source", self.cfg.source_lang, self.src_dict), ("target", self.cfg.target_lang, self.tgt_dict))

    def state_dict(self):
        return {**super().state_dict(), "dictionary_sizes": {role: len(d) for role, _, d in self._dictionaries()}}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        trained = state_dict.pop("dictionary_sizes", {})
        data = utils.split_paths(self.cfg.data)[0]
        for role, lang, dictionary in self._dictionaries():
            if role in trained and trained[role] != len(dictionary):
                raise ValueError(
                    f"{os.path.join(data, f'dict.{lang}.txt')} has {len(dictionary)} entries but the "
                    f"checkpoint was trained with a {role} dictionary of {trained[role]}; "
                    "use the dictionaries the model was trained with"
                )
        super().load_state_dict(state_dict)
