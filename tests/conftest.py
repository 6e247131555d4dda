"""Shared fixtures. Dataset builders and shorthands live in helpers.py (importable as ``from helpers import ...``)."""
from __future__ import annotations

import pytest

import pipeline.grid
import pipeline.job
from helpers import make_tiny_mvtec, tiny_grid
from models import mvtec


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory):
    """Root of a tiny MVTec-style dataset: "widget" (RGB) and "fabric" (grayscale), 32 px,
    8 train / 2 good test / 2 x 2 defective test images each, with masks. Read-only: copy it
    (or call make_tiny_mvtec yourself) before changing files in it."""
    return make_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """Root of a tiny MVTec-style dataset of one category, "widget" (RGB, as in tiny_mvtec), for
    runs of the command line on it. Read-only, as tiny_mvtec."""
    return make_tiny_mvtec(tmp_path_factory.mktemp("widget_data"), categories=("widget",))


@pytest.fixture(scope="session")
def grid_of_four(tmp_path_factory):
    """One 1-epoch grid of the four tiny models on "widget" (helpers.tiny_grid): (root, csv, rows,
    folder). Shared by the tests that read its rows or rerun it; they copy before changing."""
    tmp = tmp_path_factory.mktemp("grid")
    root = make_tiny_mvtec(tmp / "data", categories=("widget",))
    csv = tmp / "results.csv"
    df = tiny_grid(root, csv, tmp)
    return root, csv, df, tmp


@pytest.fixture
def fresh_memory_cache():
    """Empty the decoder's process-wide memory cache before and after a test that builds or
    changes files in place, so it decodes what it wrote."""
    mvtec.clear_memory_cache()
    yield
    mvtec.clear_memory_cache()


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the grid decodes any image (a refusal must come before)."""
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data was read"))


@pytest.fixture
def trainings(monkeypatch):
    """Counts the models trained (every training goes through job.train_model)."""
    calls = []
    real = pipeline.job.train_model

    def counting(spec, data, **kw):
        calls.append((spec.category, spec.model, spec.train.seed))
        return real(spec, data, **kw)

    monkeypatch.setattr(pipeline.job, "train_model", counting)
    return calls
