"""The one way tests reach ``../shared`` (real models and data for development).

A user's machine has no ``../shared``: a test that needs it takes the ``shared_dir``
fixture (conftest.py) or carries :data:`requires_shared`, and skips with a reason when
it is absent; a test that only prefers real assets reads :data:`SHARED` (``None`` without
them) and falls back to built-in ones. ``MILCO_OS_SHARED`` points elsewhere;
``MILCO_OS_SHARED=/nonexistent`` runs the suite as on a user's machine (``.ci/run`` does).
``test_shared_access.py`` proves that no other test module builds a path to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milco_os.models.presets import shared_dir

SHARED: Path | None = shared_dir()
ABSENT_REASON = "../shared is not present on this machine (a user's machine)"


def requires_shared(test):
    """Mark ``test`` as needing ``../shared``: marker ``shared``, skipped without it."""
    return pytest.mark.shared(pytest.mark.skipif(SHARED is None, reason=ABSENT_REASON)(test))


def shared_path(*parts: str) -> Path:
    """A path inside ``../shared``; skips the calling test when ``../shared`` is absent."""
    if SHARED is None:
        pytest.skip(ABSENT_REASON)
    return SHARED.joinpath(*parts)
