from . import rdrop_label_smoothed_cross_entropy  # noqa: F401
from . import rdrop_cross_entropy  # noqa: F401
from . import rdrop_adaptive_loss  # noqa: F401
from . import rdrop_sentence_prediction  # noqa: F401
