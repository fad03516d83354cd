"""R-Drop (Liang et al., NeurIPS 2021) for fairseq.  Importing it, which
``--user-dir`` does, registers the R-Drop criteria and tasks."""
from . import compat

compat.apply()

from . import criterions, tasks  # noqa: E402,F401

__version__ = "0.1.0"
