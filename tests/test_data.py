"""The MVTec-layout loader (models/mvtec.py) and the demo dataset (pipeline/demo_data.py), on tiny folders."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import models
from helpers import dataset_error, make_tiny_mvtec
from models import mvtec
from models.errors import ConfigError, DatasetError
from pipeline import demo_data as synthetic


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    mvtec.clear_memory_cache()  # each test decodes what it builds
    yield
    mvtec.clear_memory_cache()


def _good_folder(root: Path, cat: str = "odd") -> Path:
    folder = root / cat / "train" / "good"
    folder.mkdir(parents=True)
    return folder


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


def test_list_categories_name_and_type(tiny_mvtec, tmp_path):
    assert models.list_categories(tiny_mvtec) == ["fabric", "widget"]
    assert mvtec.dataset_name(tiny_mvtec) == Path(tiny_mvtec).name
    assert mvtec.category_type(tiny_mvtec, "widget") == "custom"
    mv = make_tiny_mvtec(tmp_path / "mvtec", categories=("grid", "bottle"), n_train=1, defects=(), n_test_good=1)
    assert mvtec.dataset_name(mv) == "mvtec_ad"
    assert mvtec.category_type(mv, "grid") == "texture" and mvtec.category_type(mv, "bottle") == "object"


def test_odd_modes_and_non_square_are_converted(tmp_path):
    folder = _good_folder(tmp_path)
    Image.fromarray(np.full((20, 30, 4), [200, 100, 50, 255], np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(folder / "sixteen.png")  # I;16 -> 255
    Image.fromarray(np.full((20, 20), 0.5, np.float32)).save(folder / "float.tif")  # F in [0, 1] -> 128
    Image.fromarray(np.full((20, 20, 2), [90, 255], np.uint8), "LA").save(folder / "la.png")
    Image.new("1", (20, 20), 1).save(folder / "bilevel.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(folder / "cmyk.jpg")
    with Image.open(folder / "sixteen.png") as im:
        assert im.mode.startswith("I")
    ds = models.MVTecAD(tmp_path, "odd", "train", image_size=8, val_fraction=0.0)
    px = {Path(p).stem: ds.images[i, :, 4, 4].tolist() for i, p in enumerate(ds.paths)}
    assert px["rgba"] == [200, 100, 50] and px["sixteen"] == [255] * 3 and px["la"] == [90] * 3
    assert px["bilevel"] == [255] * 3 and abs(px["float"][0] - 128) <= 1 and px["cmyk"][0] > 240
    assert abs(px["palette"][0] - 128) <= 2
    gray = models.MVTecAD(tmp_path, "odd", "train", image_size=8, in_channels=1, val_fraction=0.0)
    assert gray.images.shape == (7, 1, 8, 8)


def test_rgba_transparency_is_black_and_16bit_is_scaled(tmp_path):
    folder = _good_folder(tmp_path)
    Image.fromarray(np.full((8, 8, 4), [255, 255, 255, 0], np.uint8), "RGBA").save(folder / "clear.png")
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "mid16.png")  # 32896 / 257 = 128
    ds = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0)
    assert ds.images[0].max() == 0 and (ds.images[1] == 128).all()


def test_extensions_hidden_files_and_unicode_names(tmp_path):
    folder = _good_folder(tmp_path)
    img = Image.fromarray(np.full((10, 10, 3), 100, np.uint8))
    for name in ("a.PNG", "b.jpeg", "c.JPG", "d.bmp", "e.TIF", "f.tiff", "g h.png", "ñandú 画像.png"):
        img.save(folder / name)
    img.save(folder / ".hidden.png", format="PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.PNG").write_bytes(b"macOS resource fork")
    ds = models.MVTecAD(tmp_path, "odd", image_size=4, val_fraction=0.0)
    assert len(ds) == 8 and "ñandú 画像.png" in {Path(p).name for p in ds.paths}


def test_missing_mask_is_allowed_with_a_warning(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, masks=False)
    with pytest.warns(UserWarning, match="no mask"):
        ds = models.MVTecAD(root, "widget", "test", image_size=16)
    assert not ds.has_masks and len(ds) == 6 and ds.masks.sum() == 0


def test_antialiased_and_0_1_masks_are_accepted(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1, size=16)
    gt = root / "widget" / "ground_truth"
    a = np.zeros((16, 16), np.uint8)
    a[4:12, 4:12] = 255
    a[4:12, 3] = 128  # an antialiased edge
    Image.fromarray(a).save(gt / "hole" / "000_mask.png")
    Image.fromarray((a == 255).astype(np.uint8)).save(gt / "scratch" / "000_mask.png")  # 0/1
    ds = models.MVTecAD(root, "widget", "test", image_size=16)
    assert ds.masks[2].sum() == 72 and ds.masks[3].sum() == 64


# --------------------------------------------------------------------------- bad input




def test_missing_and_empty_root(tmp_path):
    dataset_error(lambda: models.MVTecAD(tmp_path / "nope", "widget"), "nope", "mvtec_anomaly_detection", "--data-root",
           "demo-data")
    dataset_error(lambda: models.list_categories(tmp_path / "nope"), "does not exist")
    dataset_error(lambda: models.list_categories(tmp_path), "no category", str(tmp_path))
    root = make_tiny_mvtec(tmp_path / "r", categories=("widget",), n_train=1, defects=())
    dataset_error(lambda: models.list_categories(root / "widget"), "category folder", "parent")


def test_unknown_category_lists_found(tiny_mvtec):
    dataset_error(lambda: models.MVTecAD(tiny_mvtec, "bottle"), "'bottle'", "fabric, widget")


def test_no_train_images(tmp_path):
    _good_folder(tmp_path)
    (tmp_path / "odd" / "train" / "good" / "readme.txt").write_text("x")
    dataset_error(lambda: models.MVTecAD(tmp_path, "odd"), "no training images", "train")
    (tmp_path / "bare").mkdir()
    dataset_error(lambda: models.MVTecAD(tmp_path, "bare"), "train/good")


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_image"])
def test_unreadable_file_is_named(tmp_path, kind):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=3, size=64)
    bad = root / "widget" / "train" / "good" / "001.png"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_text("this is not a picture")
    dataset_error(lambda: models.MVTecAD(root, "widget", image_size=16), str(bad))


def test_mask_size_mismatch_names_both(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1)
    mask = root / "widget" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (20, 10), 255).save(mask)
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=16), str(mask), "20x10", "32x32",
           str(root / "widget" / "test" / "hole" / "000.png"))


def test_unusable_mask(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1)
    mask = root / "widget" / "ground_truth" / "hole" / "000_mask.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(mask)  # a gradient, not a mask
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=16), str(mask), "binary")


def test_no_test_images_and_bad_arguments(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_test_good=0, defects=())
    dataset_error(lambda: models.MVTecAD(root, "widget", "test"), "no test images")
    for kwargs in ({"split": "dev"}, {"in_channels": 2}, {"val_fraction": 1.0}, {"image_size": 0}):
        with pytest.raises(ConfigError):
            models.MVTecAD(root, "widget", **kwargs)


# --------------------------------------------------------------------------- caches


def _forbid_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(mvtec, "_decode_image", boom)
    monkeypatch.setattr(mvtec, "_decode_mask", boom)


def test_disk_cache_reuse_and_invalidation(tiny_mvtec, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16, cache_dir=cache, memory_cache=False)
    models.MVTecAD(tiny_mvtec, "widget", "train", image_size=16, cache_dir=cache, memory_cache=False)
    assert len(list(cache.glob("*.pt"))) == 2
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        again = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16, cache_dir=cache, memory_cache=False)
        models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, cache_dir=cache, memory_cache=False)
        with pytest.raises(AssertionError):  # another size is another cache entry
            models.MVTecAD(tiny_mvtec, "widget", "test", image_size=8, cache_dir=cache, memory_cache=False)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)

    # A changed file is decoded again; the others come from the cache, a touched one (new mtime) too.
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",), n_train=3)
    models.MVTecAD(root, "widget", image_size=16, cache_dir=cache, memory_cache=False)
    changed, touched = (root / "widget" / "train" / "good" / name for name in ("002.png", "001.png"))
    with open(changed, "ab") as f:
        f.write(b"\0")
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    seen = []
    real = mvtec._decode_image
    monkeypatch.setattr(mvtec, "_decode_image", lambda path, *a: seen.append(path) or real(path, *a))
    models.MVTecAD(root, "widget", image_size=16, cache_dir=cache, memory_cache=False)
    assert seen == [changed]


@pytest.mark.parametrize("memory_cache", [False, True])
def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_decoded_again(tmp_path, memory_cache):
    """Issue 20, item 5: the caches are keyed by the file's content, not by (path, size, mtime)."""
    folder = _good_folder(tmp_path)
    for i, value in enumerate((10, 20, 30)):
        Image.new("RGB", (8, 8), (value,) * 3).save(folder / f"{i}.bmp")  # BMP: same size whatever the pixels
    cache = tmp_path / "cache"
    first = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0, cache_dir=cache, memory_cache=memory_cache)
    assert first.images[1].unique().tolist() == [20]
    replaced = folder / "1.bmp"
    st = replaced.stat()
    Image.new("RGB", (8, 8), (200,) * 3).save(replaced)
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or an unpacked archive leaves it
    assert (replaced.stat().st_size, replaced.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0, cache_dir=cache, memory_cache=memory_cache)
    assert again.images[1].unique().tolist() == [200]
    assert again.images[0].unique().tolist() == [10]


def test_memory_cache_shares_decodes(tiny_mvtec, monkeypatch):
    models.MVTecAD(tiny_mvtec, "fabric", "train", image_size=16)  # decodes all of train/good
    _forbid_decoding(monkeypatch)
    val = models.MVTecAD(tiny_mvtec, "fabric", "val", image_size=16)
    assert len(val) == 1


# --------------------------------------------------------------------------- demo dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


SMALL = dict(image_size=64, n_train=6, n_test_good=2, n_per_defect=2)


def test_demo_is_deterministic_complete_and_readable(tmp_path):
    a = synthetic.make_synthetic_dataset(tmp_path / "a", seed=1, **SMALL)
    b = synthetic.make_synthetic_dataset(tmp_path / "b", seed=1, workers=1, **SMALL)
    assert a == tmp_path / "a" and _digest(a) == _digest(b)
    c = synthetic.make_synthetic_dataset(tmp_path / "c", seed=2, **SMALL)
    assert _digest(a) != _digest(c)

    assert mvtec.dataset_name(a) == "demo" and models.list_categories(a) == sorted(synthetic.CATEGORIES)
    types = [mvtec.category_type(a, cat) for cat in models.list_categories(a)]
    assert types.count("texture") >= 2 and types.count("object") >= 2
    for cat in models.list_categories(a):
        test = models.MVTecAD(a, cat, "test", image_size=64)  # native size: thin scratches survive
        assert len(test) == 2 + 4 * 2 and test.has_masks
        assert len(set(test.defect_types) - {"good"}) == 4
        assert (test.masks[test.labels == 1].flatten(1).sum(1) > 0).all()
        assert (len(models.MVTecAD(a, cat, "train", image_size=32))
                + len(models.MVTecAD(a, cat, "val", image_size=32))) == 6

    # Rerun with the same settings: nothing rewritten. Another seed: replaced.
    stamp = (a / "DATASET.json").stat().st_mtime_ns
    synthetic.make_synthetic_dataset(a, seed=1, **SMALL)
    assert (a / "DATASET.json").stat().st_mtime_ns == stamp
    synthetic.make_synthetic_dataset(a, seed=2, **SMALL)
    assert _digest(a) == _digest(c)


@pytest.mark.parametrize("category", sorted(synthetic.CATEGORIES))
def test_demo_masks_are_exact(category):
    """The mask is the set of pixels a defect changed: nearly all of it changed, little else."""
    for d_i, defect in enumerate(synthetic.DEFECTS[synthetic.CATEGORIES[category]]):
        rng = np.random.default_rng(d_i)
        img, cov, bg = synthetic.RENDERERS[category](rng, 128)
        bad, mask = synthetic._defect(defect, rng, img, cov, bg)
        changed = np.abs(bad - img).max(axis=-1) > 0.02
        assert mask.sum() > 10, (category, defect)
        assert changed[mask].mean() > (0.5 if defect == "deformation" else 0.9), (category, defect)
        # Outside the mask only its antialiased rim changed (sub-half-pixel shifts for a warp).
        rim = ndimage.binary_dilation(mask, iterations=3 if defect == "deformation" else 1)
        assert (changed & ~rim).sum() < 0.05 * mask.sum() + 5, (category, defect)


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a demo dataset"):
        synthetic.make_synthetic_dataset(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").exists()


def test_demo_default_scale_and_time(tmp_path):
    """Default settings (MVTec scale, 256 px) for one category; the full four-category timing is in bench/."""
    start = time.perf_counter()
    root = synthetic.make_synthetic_dataset(tmp_path / "demo", categories=["tablet"])
    seconds = time.perf_counter() - start
    assert 4 * seconds < 120, (
        f"one demo category took {seconds:.0f} s (budget: 30 s for four on an idle 2-core machine)"
    )
    assert len(list((root / "tablet" / "train" / "good").glob("*.png"))) == 60  # MVTec's smallest category
    assert len(list((root / "tablet" / "test" / "good").glob("*.png"))) >= 20
    defective = [p for d in synthetic.DEFECTS["object"] for p in (root / "tablet" / "test" / d).glob("*.png")]
    masks = list((root / "tablet" / "ground_truth").rglob("*_mask.png"))
    assert len(defective) >= 30 and len(masks) == len(defective)
    with Image.open(root / "tablet" / "train" / "good" / "000.png") as im:
        assert im.size == (256, 256) and im.mode == "RGB"
