"""models/mvtec/dataset.py: ``MVTecAD``, one split of one category as uint8 tensors: shapes, labels
and aligned masks, the seeded val hold-out, the splits that cannot be loaded, what a too-small
train split tells training, and the rows of odd layouts end to end (the real command line, in-process)."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import models
from helpers import TINY_CAE_SET, cae_run_args, dataset_error, make_tiny_mvtec
from loader_helpers import good_folder, masks_beside_images, rewrite_masks, sixteen_bit
from models.errors import ConfigError
from pipeline.__main__ import main
from pipeline.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("in_channels", [1, 3])
def test_loader_shapes_counts_and_masks(tiny_mvtec, in_channels):
    for cat in ("widget", "fabric"):  # RGB and grayscale files
        test = models.MVTecAD(tiny_mvtec, cat, "test", image_size=32, in_channels=in_channels)
        assert test.images.shape == (6, in_channels, 32, 32) and test.images.dtype == torch.uint8
        assert test.masks.shape == (6, 32, 32) and test.masks.dtype == torch.uint8
        assert test.labels.tolist() == [0, 0, 1, 1, 1, 1] and test.labels.dtype == torch.int64
        assert test.defect_types == ["good"] * 2 + ["hole"] * 2 + ["scratch"] * 2
        assert test.has_masks and set(test.masks.unique().tolist()) <= {0, 1}
        assert test.masks[:2].sum() == 0 and (test.masks[2:].flatten(1).sum(1) > 0).all()
        # Masks are aligned: the helper paints "scratch" squares 250 and "hole" squares 5, exactly under the mask.
        hole, scratch = test.images[2:4], test.images[4:]
        assert (hole.permute(1, 0, 2, 3)[:, test.masks[2:4].bool()] == 5).all()
        assert (scratch.permute(1, 0, 2, 3)[:, test.masks[4:].bool()] == 250).all()
        item = test[3]
        assert item["image"].shape == (in_channels, 32, 32) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["mask"].shape == (32, 32) and item["label"] == 1 and item["defect_type"] == "hole"
        assert Path(item["path"]).name == "001.png" and len(test) == 6


def test_train_val_disjoint_and_seeded(tiny_mvtec):
    train = models.MVTecAD(tiny_mvtec, "widget", "train", image_size=16, val_fraction=0.25)
    val = models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, val_fraction=0.25)
    assert len(train) == 6 and len(val) == 2 and not set(train.paths) & set(val.paths)
    assert (train.labels == 0).all() and (val.labels == 0).all() and train.masks.sum() == 0
    again = models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, val_fraction=0.25)
    assert again.paths == val.paths
    others = {tuple(models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, val_fraction=0.25, seed=s).paths)
              for s in range(1, 6)}
    assert len(others | {tuple(val.paths)}) > 1  # the seed moves the hold-out
    none = models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, val_fraction=0.0)
    assert len(none) == 0 and none.images.shape == (0, 3, 16, 16)


def test_masks_at_reads_the_files_at_the_evaluation_size(tiny_mvtec):
    test = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16)
    assert test.masks_at(16) is test.masks
    at32 = test.masks_at(32)
    assert at32.shape == (6, 32, 32) and torch.equal(at32, models.MVTecAD(tiny_mvtec, "widget", "test").masks_at(32))
    original = test.masks_at("original")
    assert [m.shape for m in original] == [(32, 32)] * 6 and not original[0].any() and original[2].any()
    with pytest.raises(ConfigError, match="positive"):
        test.masks_at(0)


# --------------------------------------------------------------------------- splits that cannot be loaded


def test_no_train_images(tmp_path):
    good_folder(tmp_path)
    (tmp_path / "odd" / "train" / "good" / "readme.txt").write_text("x")
    dataset_error(lambda: models.MVTecAD(tmp_path, "odd"), "no training images", "train")
    (tmp_path / "bare").mkdir()
    dataset_error(lambda: models.MVTecAD(tmp_path, "bare"), "train/good")


def test_mask_size_mismatch_names_both(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1)
    mask = root / "widget" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (20, 10), 255).save(mask)
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=16), str(mask), "20x10", "32x32",
                  str(root / "widget" / "test" / "hole" / "000.png"))


def test_no_test_images_and_bad_arguments(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_test_good=0, defects=())
    dataset_error(lambda: models.MVTecAD(root, "widget", "test"), "no test images")
    for kwargs in ({"split": "dev"}, {"in_channels": 2}, {"val_fraction": 1.0}, {"image_size": 0}):
        with pytest.raises(ConfigError):
            models.MVTecAD(root, "widget", **kwargs)


# --------------------------------------------------------------------------- a tiny train set


def test_two_train_images_says_one_went_to_val(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2)
    train = models.MVTecAD(root, "widget", "train", image_size=32)
    assert (train.n_files, train.n_val, len(train)) == (2, 1, 1)
    model = models.build_model("cae", image_size=32, widths=[8, 16], latent_dim=16)
    dataset_error(lambda: fit(model, train, cfg=TrainConfig(min_steps=0, epochs=1, batch_size=4, device="cpu",
                                                            progress=False)),
                  "train/good has 2 images", "1 was held out as val (val_fraction 0.1)", "leaving 1 for training",
                  "add images to train/good")


def test_one_train_image_without_val_keeps_the_plain_message(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=1)
    train = models.MVTecAD(root, "widget", "train", image_size=32)
    model = models.build_model("cae", image_size=32, widths=[8, 16], latent_dim=16)
    msg = dataset_error(lambda: fit(model, train, cfg=TrainConfig(min_steps=0, epochs=1, device="cpu", progress=False)),
                        "found 1", "add images to train/good")
    assert "held out" not in msg


# --------------------------------------------------------------------------- the command line, end to end


def test_cli_rows_of_masks_beside_images_and_16bit_masks_match_the_usual_layout(tmp_path, monkeypatch):
    """The issue's symptoms as a user meets them: n_test 12 -> 20 and an image AUROC that
    moves (masks beside images), NaN pixel metrics (16-bit 0/1 masks). The same images in
    three layouts must give the same row."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    root = tmp_path / "data"
    for name in ("usual", "beside", "sixteen"):
        make_tiny_mvtec(tmp_path / name, categories=("widget",), n_train=6)
        shutil.move(tmp_path / name / "widget", root / name)
    masks_beside_images(root, "beside")
    rewrite_masks(root, sixteen_bit, "sixteen")
    csv = tmp_path / "r.csv"
    code = main(cae_run_args(root, tmp_path, "--eval-size", "32", *TINY_CAE_SET))
    assert code == 0
    rows = pd.read_csv(csv).set_index("category")
    assert rows.loc["usual", "n_test"] == 6 and not np.isnan(rows.loc["usual", "pixel_auroc"])
    for name in ("beside", "sixteen"):
        for col in ("n_test", "image_auroc", "pixel_auroc", "aupro"):
            assert rows.loc[name, col] == pytest.approx(rows.loc["usual", col], abs=1e-6), (name, col)


def test_loader_resizes_to_height_by_width(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("strip",), size=(80, 32))
    ds = models.MVTecAD(root, "strip", "test", image_size=(16, 40))
    assert ds.images.shape[1:] == (3, 16, 40) and ds.masks.shape[1:] == (16, 40)
    assert ds.original_sizes[0] == (80, 32)  # (width, height)
    assert models.MVTecAD(root, "strip", "test", image_size=(16, 16)).image_size == 16  # one spelling per size
    masks = ds.masks_at((32, 80))
    assert masks.shape[1:] == (32, 80)
    full = ds.masks_at("original")
    assert full[0].shape == (32, 80)
    # the masks read at the image's own size and at 32 x 80 are the same pixels here
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(full, masks))
    for i in np.flatnonzero(ds.labels.numpy()):  # the defect square lands where the mask says
        x = ds.images[i].float().mean(0)
        m = ds.masks[i].bool()
        assert (x[m].mean() - x[~m].mean()).abs() > 40
