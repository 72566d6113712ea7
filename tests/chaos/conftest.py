"""The chaos suite: real kills at random moments, under load. Marked ``chaos``.

A short form runs with every ``pytest``; set ``PERSIST_CHAOS_ROUNDS=100`` for
the full one (``pytest -m chaos``).
"""

from __future__ import annotations

import os
import random

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "chaos" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def rng():
    seed = int(os.environ.get("PERSIST_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (PERSIST_CHAOS_SEED={seed} repeats this run)")
    return random.Random(seed)
