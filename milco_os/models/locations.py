"""Where milco-os keeps models, torch-free (the ONNX Runtime backend starts without torch).

>>> import os
>>> os.environ["MILCO_OS_HOME"] = "/tmp/milco-home"
>>> str(model_dir("milco-small"))
'/tmp/milco-home/models/milco-small'
>>> del os.environ["MILCO_OS_HOME"]
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "milco-small"  # the shipped model: every command's default


def cache_root() -> Path:
    """``$MILCO_OS_HOME``, else ``~/.cache/milco-os``."""
    return Path(os.environ.get("MILCO_OS_HOME") or Path.home() / ".cache" / "milco-os")


def model_dir(name: str) -> Path:
    """The folder a named model is assembled into."""
    return cache_root() / "models" / name
