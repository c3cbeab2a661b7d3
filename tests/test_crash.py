"""A few seeded SIGKILL trials against a writer doing add/delete/compact (the full 100: `make stress`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_harness import run  # noqa: E402


def test_kb_survives_sigkill_at_random_points():
    assert run(trials=5, seed=7) == []
