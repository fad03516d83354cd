from . import rdrop_translation  # noqa: F401
