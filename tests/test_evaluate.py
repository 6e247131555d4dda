"""Evaluation (pipeline/evaluate.py): the shape the pixel metrics are computed at, maps resized
to it and masks read at it, what ``evaluate`` records, and the test split scored in batches. The
metrics themselves: test_metrics.py; thresholds: test_thresholds.py."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import models
import pipeline.evaluate
from helpers import make_tiny_mvtec
from pipeline import metrics
from pipeline.evaluate import EvalConfig, eval_shape, evaluate, maps_at

TINY_CAE = {"widths": (8, 16), "latent_dim": 16}


def test_eval_shape_keeps_the_input_aspect():
    assert eval_shape(256, 128) == 256
    assert eval_shape(256, (128, 320)) == (256, 640)
    assert eval_shape(256, (320, 128)) == (640, 256)
    assert eval_shape(100, (48, 96)) == (100, 200)
    assert eval_shape("original", (48, 96)) == "original"


def test_maps_at_an_eval_shape_or_each_images_own_size():
    maps = torch.rand(3, 8, 20)
    assert maps_at(maps, (16, 40)).shape == (3, 16, 40)
    assert maps_at(maps, (8, 20)) is maps
    out = maps_at(maps, "original", [(40, 10), (20, 8), (60, 30)])  # (width, height) each
    assert [a.shape for a in out] == [(10, 40), (8, 20), (30, 60)]


def test_evaluate_records_the_eval_shape_of_its_pixel_metrics(tiny_mvtec, monkeypatch):
    monkeypatch.setattr(pipeline.evaluate, "_FEW_VAL_SAID", set())  # the once-per-process warning, said here too
    splits = {s: models.MVTecAD(tiny_mvtec, "widget", s, image_size=32) for s in ("train", "val", "test")}
    data = SimpleNamespace(**splits)
    torch.manual_seed(0)
    model = models.build_model("cae", image_size=32, **TINY_CAE).eval()
    with pytest.warns(UserWarning, match="rests on 1 val image"):
        evaluation = evaluate(model, data, EvalConfig(eval_size=64))
    assert evaluation.eval_shape == 64 and evaluation.test_maps.shape[1:] == (32, 32)  # scores at the input size
    assert evaluation.pixel_pos is not None and 0 <= evaluation.metrics["pixel_auroc"] <= 1


def test_eval_size_keeps_the_pixel_auroc_of_a_map_constant_per_region():
    """Maps upsampled bilinearly to 256 against masks read at 256 give the same pixel AUROC as
    at 128 when the map is constant per region (the ranking of regions is what counts)."""
    rng = np.random.default_rng(0)
    masks_128 = np.zeros((6, 128, 128), np.uint8)
    maps_128 = np.zeros((6, 128, 128), np.float32)
    for i in range(6):
        maps_128[i] = rng.uniform(0.0, 0.05)  # each image's own normal level
        if i >= 2:  # defective: a rectangle with a higher value (far enough above for its blurred rim too)
            y, x = rng.integers(10, 90, 2)
            masks_128[i, y : y + 20, x : x + 24] = 1
            maps_128[i, y : y + 20, x : x + 24] = rng.uniform(0.6, 0.85)
    maps_128[1] = 0.9  # a good image brighter than every defect: AUROC below 1, so the test can tell
    masks_256 = masks_128.repeat(2, axis=1).repeat(2, axis=2)  # the same regions read at 256
    up = maps_at(torch.from_numpy(maps_128), 256).numpy()
    assert up.shape == (6, 256, 256) and up.dtype == np.float32
    at_128, at_256 = metrics.pixel_auroc(masks_128, maps_128), metrics.pixel_auroc(masks_256, up)
    assert at_128 < 0.99 and at_256 == pytest.approx(at_128, abs=1e-12)


def test_masks_are_read_at_the_evaluation_size_and_at_their_own(tmp_path):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",), size=(40, 32))  # 40 x 32 px files
    ds = models.MVTecAD(root, "widget", "test", image_size=32)
    at_64 = ds.masks_at(64)
    assert at_64.shape == (len(ds), 64, 64) and at_64.dtype == torch.uint8
    original = ds.masks_at("original")
    assert [m.shape for m in original] == [(32, 40)] * len(ds)
    for i, path in enumerate(ds.mask_paths):
        if path is not None:  # the file itself, not an upsampled copy of the 32-px mask
            assert np.array_equal(original[i], (np.array(Image.open(path)) > 0).astype(np.uint8))
    maps = torch.rand(len(ds), 32, 32)
    up = maps_at(maps, "original", ds.original_sizes)
    assert [m.shape for m in up] == [(32, 40)] * len(ds)
    assert metrics.pixel_auroc(original, up) == pytest.approx(
        metrics.pixel_auroc(np.concatenate([m.ravel() for m in original]), np.concatenate([m.ravel() for m in up])))
    assert 0 <= metrics.aupro(original, up) <= 1


def test_score_split_is_batched_and_matches_the_model(tiny_mvtec):
    root = tiny_mvtec
    torch.manual_seed(0)
    m = models.build_model("cae", image_size=32, **TINY_CAE).eval()
    ds = models.MVTecAD(root, "widget", "test", image_size=32)
    maps, scores = pipeline.evaluate.score_split(m, ds, batch_size=3, device=torch.device("cpu"))
    x = ds.images.float() / 255
    assert torch.allclose(maps, m.anomaly_map(x), atol=1e-6)
    assert torch.allclose(scores, m.anomaly_score(x), atol=1e-6)
    assert not math.isnan(float(scores.sum()))
