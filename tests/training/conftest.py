"""Training tests run tiny networks: one torch thread is faster on the shared cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Every test module here runs with :func:`tests.conftest.one_torch_thread` (module-scoped and autouse,
    so it is in place before the modules' own fixtures train anything)."""
    yield
