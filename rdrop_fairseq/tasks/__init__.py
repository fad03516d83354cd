from . import rdrop_translation  # noqa: F401
from . import rdrop_language_modeling  # noqa: F401
from . import rdrop_sentence_prediction  # noqa: F401
