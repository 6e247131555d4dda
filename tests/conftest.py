"""Shared fixtures. Dataset builders live in helpers.py (importable as ``from helpers import ...``)."""
from __future__ import annotations

import pytest

from helpers import make_tiny_mvtec
from models import mvtec


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory):
    """Root of a tiny MVTec-style dataset: "widget" (RGB) and "fabric" (grayscale), 32 px,
    8 train / 2 good test / 2 x 2 defective test images each, with masks. Read-only: copy it
    (or call make_tiny_mvtec yourself) before changing files in it."""
    return make_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))


@pytest.fixture
def fresh_memory_cache():
    """Empty the decoder's process-wide memory cache before and after a test that builds or
    changes files in place, so it decodes what it wrote."""
    mvtec.clear_memory_cache()
    yield
    mvtec.clear_memory_cache()
