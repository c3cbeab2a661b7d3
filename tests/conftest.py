"""Fixtures any test file may use. Keep this small and generic: file-specific helpers live in their test file."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`shared/data` beside the repository; a test asking for it is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the repo")
    return SHARED_DATA
