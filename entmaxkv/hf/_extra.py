"""The ``models`` extra: import transformers (and gguf) or say clearly what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "SUPPORTED_TRANSFORMERS"]

SUPPORTED_TRANSFORMERS = ((5, 17), (5, 40))  # [5.17, 5.40): 5.40 removes the past_key_values aliases
INSTALL_HINT = "pip install 'entmaxkv[models]'"


def require(name: str = "transformers") -> ModuleType:
    """Import ``name`` (transformers, gguf, ...) from the ``models`` extra.

    Raises ``ImportError`` naming the extra when it is missing, and for transformers outside
    the supported range (the cache and attention hooks changed across 5.x).
    """
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"entmaxkv.hf needs the 'models' extra ({name} is missing): {INSTALL_HINT}"
        ) from err
    if name == "transformers":
        version = tuple(int(x) for x in module.__version__.split(".")[:2])
        lo, hi = SUPPORTED_TRANSFORMERS
        if not lo <= version < hi:
            raise ImportError(
                f"entmaxkv.hf supports transformers >=5.17,<5.40, found {module.__version__}: {INSTALL_HINT}"
            )
    return module
