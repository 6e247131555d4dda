"""Data folders as users make them by accident (issue 13): inverted masks, masks left beside
the test images, 16-bit 0/1 masks, 32-bit and float images, a tiny train set, and what else
a careless but legitimate file does to the loader (models/mvtec.py). Every case writes real
files into tmp_path; the end-to-end symptoms run the real command line in-process."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import models
from helpers import dataset_error, make_tiny_mvtec
from models import filehash, mvtec
from pipeline.__main__ import main
from pipeline.fingerprint import data_fingerprint
from pipeline.train import TrainConfig, fit


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    mvtec.clear_memory_cache()  # each test decodes what it builds
    yield
    mvtec.clear_memory_cache()


def _load(root, category="widget", split="test", **kw):
    """(dataset, [warning texts]) with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = models.MVTecAD(root, category, split, image_size=kw.pop("image_size", 32), **kw)
    return ds, [str(w.message) for w in caught]




def _mask_files(root, category="widget") -> list[Path]:
    return sorted((Path(root) / category / "ground_truth").rglob("*_mask.png"))


def _rewrite_masks(root, fn, category="widget", suffix=".png") -> None:
    """Replace every mask of ``category`` by ``fn(0/255 uint8 array)`` saved with ``suffix``."""
    for f in _mask_files(root, category):
        a = np.asarray(Image.open(f))
        f.unlink()
        fn(a).save(f.with_suffix(suffix))


def _reference(tmp_path, name="ref", **kw):
    """The same tiny category written the usual way (8-bit 0/255 masks in ground_truth/)."""
    root = make_tiny_mvtec(tmp_path / name, categories=("widget",), **kw)
    ds, _ = _load(root)
    return root, ds


# --------------------------------------------------------------------------- item 1: inverted masks


def test_inverted_masks_are_reported_once_naming_the_first_file(tmp_path):
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "inv", categories=("widget",))
    files = _mask_files(root)
    for f in files:  # white = normal: the defect saved black on white
        Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    ds, caught = _load(root)
    said = [m for m in caught if "inverted" in m]
    assert len(said) == 1, caught  # one sentence for the category, not one per file
    for words in ("4 of the 4 masks", str(files[0]), "save defects white (255) on black (0)"):
        assert words in said[0]
    # Not silently "fixed": the masks are read as written, the user decides.
    assert (ds.masks[ds.labels == 1].float().mean(dim=(1, 2)) > 0.5).all()
    # A usual category says nothing of the kind.
    assert not any("inverted" in m for m in _load(make_tiny_mvtec(tmp_path / "ok", categories=("widget",)))[1])
    assert ref.masks.sum() > 0


def test_one_inverted_mask_among_good_ones_is_counted(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    f = _mask_files(root)[-1]
    Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    said = [m for m in _load(root)[1] if "inverted" in m]
    assert len(said) == 1 and "1 of the 4 masks" in said[0] and str(f) in said[0]


# --------------------------------------------------------------------------- item 2: masks beside the images


def _masks_beside_images(root, category="widget") -> None:
    """What a user does by accident: the masks copied into test/<defect>/, no ground_truth/."""
    cat = Path(root) / category
    for f in _mask_files(root, category):
        shutil.move(f, cat / "test" / f.parent.name / f.name)
    shutil.rmtree(cat / "ground_truth")


def test_masks_beside_the_test_images_are_masks_not_test_images(tmp_path):
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "beside", categories=("widget",))
    _masks_beside_images(root)
    test = root / "widget" / "test"
    (test / "scratch" / "001_mask.png").rename(test / "scratch" / "001_MASK.PNG")  # any case
    ds, caught = _load(root)
    assert len(ds) == len(ref) == 6 and ds.labels.tolist() == ref.labels.tolist()
    assert not any(Path(p).stem.lower().endswith("_mask") for p in ds.paths)
    assert ds.has_masks and (ds.masks == ref.masks).all()
    assert not any("no mask" in m for m in caught)
    said = [m for m in caught if "beside" in m]
    assert len(said) == 1 and "4 mask files" in said[0] and "used as masks, not as test images" in said[0]
    assert ds.masks_at(16).shape == (6, 16, 16)  # pixel metrics at another size read the same files


def test_mask_files_in_test_without_their_image_are_not_test_images(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    stray = root / "widget" / "test" / "hole" / "007_mask.png"  # its image was deleted, the mask was not
    shutil.copy(_mask_files(root)[0], stray)
    ds, caught = _load(root)
    assert len(ds) == 6 and str(stray) not in ds.paths
    said = [m for m in caught if "beside" in m]
    assert len(said) == 1 and str(stray) in said[0] and "no image" in said[0]


# --------------------------------------------------------------------------- item 3: masks of other bit depths


def _u16(a):
    return Image.fromarray((a > 0).astype(np.uint16))  # 16-bit, 0/1


MASK_FORMS = {
    "16bit_0_1": (_u16, ".png"),
    "16bit_0_100": (lambda a: Image.fromarray((a > 0).astype(np.uint16) * 100), ".png"),
    "16bit_0_65535": (lambda a: Image.fromarray((a > 0).astype(np.uint16) * 65535), ".png"),
    "32bit_int_0_1": (lambda a: Image.fromarray((a > 0).astype(np.int32)), ".tif"),
    "float_0_1": (lambda a: Image.fromarray((a > 0).astype(np.float32)), ".tif"),
    "bilevel": (lambda a: Image.fromarray(a > 0), ".png"),
    "8bit_0_1": (lambda a: Image.fromarray((a > 0).astype(np.uint8)), ".png"),
}


@pytest.mark.parametrize("form", sorted(MASK_FORMS))
def test_any_non_zero_mask_pixel_is_a_defect_whatever_the_bit_depth(tmp_path, form):
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / form, categories=("widget",))
    fn, suffix = MASK_FORMS[form]
    _rewrite_masks(root, fn, suffix=suffix)
    ds, caught = _load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), form
    assert not any("empty" in m for m in caught), caught
    assert (ds.masks_at(64) == ref.masks_at(64)).all()


def test_antialiased_16bit_mask_is_thresholded_at_half_its_own_maximum(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_per_defect=1, size=16)
    a = np.zeros((16, 16), np.uint16)
    a[4:12, 4:12] = 1000  # a 16-bit mask whose defect value is 1000, not 65535
    a[4:12, 3] = 400  # an antialiased edge below half of 1000
    a[4:12, 12] = 600  # and one above
    Image.fromarray(a).save(root / "widget" / "ground_truth" / "hole" / "000_mask.png")
    ds, _ = _load(root, image_size=16)
    assert ds.masks[ds.defect_types.index("hole")].sum() == 72


# --------------------------------------------------------------------------- item 4: 32-bit and float images


def _scene(lo: float, hi: float, size: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return lo + (hi - lo) * (x + y) / (2 * size - 2)


def _odd_category(tmp_path, files: dict) -> Path:
    folder = tmp_path / "odd" / "train" / "good"
    folder.mkdir(parents=True)
    for name, array in files.items():
        Image.fromarray(array).save(folder / name)
    return tmp_path


def test_two_32bit_exposures_of_one_scene_keep_their_ratio(tmp_path):
    scene = np.rint(_scene(0, 250)).astype(np.int32)
    root = _odd_category(tmp_path, {"a_short.tif": scene, "b_long.tif": scene * 200})  # 32-bit int, 'I'
    ds, caught = _load(root, "odd", "train", image_size=16, in_channels=1, val_fraction=0.0)
    short, long_ = ds.images[0, 0].double(), ds.images[1, 0].double()
    # One scale (16-bit: 65535 = white) for both, so the long exposure is 200 times brighter.
    assert np.allclose(long_.numpy(), scene * 200 / 257, atol=1)
    assert short.max() <= 1  # the short one is not read as an 8-bit image (it would be the brighter one)
    said = [m for m in caught if "almost black" in m]
    assert len(said) == 1 and "a_short.tif" in said[0] and "8-bit PNG" in said[0]


def test_float_images_in_0_1_keep_their_ratio(tmp_path):
    scene = _scene(0, 0.4).astype(np.float32)
    root = _odd_category(tmp_path, {"a.tif": scene, "b.tif": scene * 2})
    ds, _ = _load(root, "odd", "train", image_size=16, in_channels=1, val_fraction=0.0)
    assert np.allclose(ds.images[0, 0].numpy(), scene * 255, atol=1)
    assert np.allclose(ds.images[1, 0].numpy(), scene * 510, atol=1)


@pytest.mark.parametrize("name,array,words", [
    ("int_70000.tif", np.rint(_scene(0, 70000)).astype(np.int32), ("70000", "16-bit range", "8- or 16-bit PNG")),
    ("int_negative.tif", np.rint(_scene(-5, 100)).astype(np.int32), ("-5", "8- or 16-bit PNG")),
    ("float_0_3.tif", _scene(0, 3).astype(np.float32), ("3", "[0, 1]", "8- or 16-bit PNG")),
    ("float_nan.tif", np.where(_scene(0, 1) > 0.5, np.nan, 0.2).astype(np.float32), ("NaN", "8- or 16-bit PNG")),
])
def test_images_outside_their_types_range_are_refused_not_stretched(tmp_path, name, array, words):
    root = _odd_category(tmp_path, {"fine.png": np.full((16, 16), 100, np.uint8), name: array})
    dataset_error(lambda: models.MVTecAD(root, "odd", "train", image_size=8, val_fraction=0.0), name, *words)


# --------------------------------------------------------------------------- item 13: a tiny train set


def test_two_train_images_says_one_went_to_val(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2)
    train = models.MVTecAD(root, "widget", "train", image_size=32)
    model = models.build_model("cae", image_size=32, widths=[8, 16], latent_dim=16)
    dataset_error(lambda: fit(model, train, cfg=TrainConfig(epochs=1, batch_size=4, device="cpu", progress=False)),
           "train/good has 2 images", "1 was held out as val (val_fraction 0.1)", "leaving 1 for training",
           "add images to train/good")


def test_one_train_image_without_val_keeps_the_plain_message(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=1)
    train = models.MVTecAD(root, "widget", "train", image_size=32)
    model = models.build_model("cae", image_size=32, widths=[8, 16], latent_dim=16)
    msg = dataset_error(lambda: fit(model, train, cfg=TrainConfig(epochs=1, device="cpu", progress=False)),
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
    _masks_beside_images(root, "beside")
    _rewrite_masks(root, _u16, "sixteen")
    csv = tmp_path / "r.csv"
    code = main(["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--eval-size", "32", "--results-csv", str(csv), "--checkpoint-dir",
                 str(tmp_path / "ck"), "--no-progress", "--num-threads", "1",
                 "--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16"])
    assert code == 0
    rows = pd.read_csv(csv).set_index("category")
    assert rows.loc["usual", "n_test"] == 6 and not np.isnan(rows.loc["usual", "pixel_auroc"])
    for name in ("beside", "sixteen"):
        for col in ("n_test", "image_auroc", "pixel_auroc", "aupro"):
            assert rows.loc[name, col] == pytest.approx(rows.loc["usual", col], abs=1e-6), (name, col)


# --------------------------------------------------------------------------- beyond the list


def test_mask_names_in_other_cases_and_formats_are_found(tmp_path):
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "names", categories=("widget",))
    gt = root / "widget" / "ground_truth"
    renames = {"hole/000_mask.png": "hole/000_MASK.png", "hole/001_mask.png": "hole/001_Mask.PNG",
               "scratch/000_mask.png": "scratch/000_mask.bmp", "scratch/001_mask.png": "scratch/001.tif"}
    for old, new in renames.items():
        Image.open(gt / old).save(gt / new)
        (gt / old).unlink()
    (gt / "scratch").rename(gt / "Scratch")  # the defect folder's name in another case than test/scratch
    ds, caught = _load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), caught


def test_masks_that_match_no_image_are_named_in_the_missing_mask_warning(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    for f in _mask_files(root):  # 000_mask.png -> 0_mask.png: the images are 000.png
        f.rename(f.with_name(f"{int(f.name[:3])}_mask.png"))
    ds, caught = _load(root)
    said = [m for m in caught if "no mask" in m]
    assert not ds.has_masks and len(said) == 1
    assert "4 mask files in ground_truth/ match no test image" in said[0] and "0_mask.png" in said[0]


def test_masks_in_a_misnamed_folder_are_pointed_at(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    (root / "widget" / "ground_truth").rename(root / "widget" / "Ground Truth")
    ds, caught = _load(root)
    said = [m for m in caught if "no mask" in m]
    assert not ds.has_masks and len(said) == 1 and "'Ground Truth'" in said[0] and "ground_truth" in said[0]


@pytest.mark.parametrize("name", ["Good", "ok", "normal"])
def test_good_test_folder_under_another_name_is_refused(tmp_path, name):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    (root / "widget" / "test" / "good").rename(root / "widget" / "test" / name)
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=32), f"test/{name}", "rename it to good")


def test_links_work_and_a_broken_link_is_named(tmp_path):
    _, ref = _reference(tmp_path)
    root = tmp_path / "linked"
    elsewhere = make_tiny_mvtec(root / "store", categories=("widget",))  # elsewhere in the data root
    (root / "widget").mkdir(parents=True)
    for part in ("train", "ground_truth"):  # linked folders
        (root / "widget" / part).symlink_to(elsewhere / "widget" / part, target_is_directory=True)
    for f in (elsewhere / "widget" / "test").rglob("*.png"):  # linked files
        link = root / "widget" / "test" / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    ds, _ = _load(root)
    assert len(ds) == 6 and (ds.masks == ref.masks).all()
    # A category, or the whole data root, linked from elsewhere is read where it lies.
    (tmp_path / "root_link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "cat_links").mkdir()
    (tmp_path / "cat_links" / "widget").symlink_to(elsewhere / "widget", target_is_directory=True)
    for other in (tmp_path / "root_link", tmp_path / "cat_links"):
        assert (_load(other)[0].masks == ref.masks).all()
    dangling = root / "widget" / "test" / "hole" / "002.png"
    dangling.symlink_to(tmp_path / "moved_away.png")
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=32), str(dangling), "broken",
                  "fix or remove")


def test_two_files_of_one_name_in_a_folder_are_reported(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    folder = root / "widget" / "test" / "hole"
    Image.open(folder / "000.png").convert("RGB").save(folder / "000.jpg")  # a converted copy left behind
    ds, caught = _load(root)
    said = [m for m in caught if "same name" in m]
    assert len(said) == 1 and "000.jpg" in said[0] and "000.png" in said[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_permissions_not_damage(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    f = root / "widget" / "train" / "good" / "000.png"
    f.chmod(0)
    try:
        msg = dataset_error(lambda: models.MVTecAD(root, "widget", "train", image_size=32), str(f), "permission")
        assert "damaged" not in msg
    finally:
        f.chmod(0o644)


def test_empty_masks_are_counted_once_and_a_thin_defect_lost_by_resizing_is_not_empty(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    files = _mask_files(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files[0])  # saved without its defect
    thin = np.zeros((32, 32), np.uint8)
    thin[1, 1] = 255  # one pixel: gone at 8 px (nearest), still there at the evaluation size
    Image.fromarray(thin).save(files[1])
    ds, caught = _load(root, image_size=8)
    said = [m for m in caught if "empty" in m]
    assert len(said) == 1 and "1 of the 4 masks" in said[0] and str(files[0]) in said[0], caught
    assert ds.masks_at(32)[ds.mask_paths.index(files[1])].sum() == 1


# --------------------------------------------------------------------------- issue 20


def _halves(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and right halves (bool) of each defect square of a 0/255 mask."""
    ys, xs = np.nonzero(a)
    mid = (xs.min() + xs.max() + 1) // 2
    left = (a > 0) & (np.arange(a.shape[1])[None, :] < mid)
    return left, (a > 0) & ~left


def _two_colours(a):  # a red and a dark-blue defect
    left, right = _halves(a)
    rgb = np.zeros((*a.shape, 3), np.uint8)
    rgb[left] = (255, 0, 0)
    rgb[right] = (0, 0, 80)
    return Image.fromarray(rgb)


def _classes(a, dtype=np.uint8):  # class indices 0 / 1 / 3
    left, right = _halves(a)
    return Image.fromarray((left * 1 + right * 3).astype(dtype))


def _palette(a):  # palette indices 1 and 2, both drawn black: the index marks, not the colour
    im = _classes(a)
    p = Image.frombytes("P", im.size, np.where(np.asarray(im) == 3, 2, np.asarray(im)).astype(np.uint8).tobytes())
    p.putpalette([0, 0, 0] * 256)
    return p


def _alpha_only(mode):
    def encode(a):
        colour = np.zeros((*a.shape, len(mode) - 1), np.uint8) + (255 if mode == "RGBA" else 0)
        return Image.fromarray(np.dstack([colour, a]).astype(np.uint8), mode)
    return encode


MASK_ENCODINGS = {
    "rgb_red_and_dark_blue": _two_colours,
    "class_indices_0_1_3": _classes,
    "class_indices_16bit_0_1_3": lambda a: _classes(a, np.uint16),
    "palette_indices_drawn_black": _palette,
    "la_marked_in_alpha_only": _alpha_only("LA"),
    "rgba_white_marked_in_alpha_only": _alpha_only("RGBA"),
}


@pytest.mark.parametrize("encoding", sorted(MASK_ENCODINGS))
def test_any_non_zero_pixel_of_any_channel_is_a_defect(tmp_path, encoding):
    """Issue 20, item 6: colour channels, class indices, palette indices and alpha all mark defects."""
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / encoding, categories=("widget",))
    _rewrite_masks(root, MASK_ENCODINGS[encoding])
    ds, caught = _load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), (encoding, ds.masks.sum(), ref.masks.sum())
    assert not any("empty" in m or "inverted" in m for m in caught), caught
    assert (ds.masks_at(64) == ref.masks_at(64)).all()


def test_transparent_pixels_of_a_mask_are_normal_whatever_their_colour(tmp_path):
    _, ref = _reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "rgba", categories=("widget",))

    def red_on_clear_white(a):  # the background white but fully transparent
        rgba = np.full((*a.shape, 4), (255, 255, 255, 0), np.uint8)
        rgba[a > 0] = (255, 0, 0, 255)
        return Image.fromarray(rgba, "RGBA")

    _rewrite_masks(root, red_on_clear_white)
    assert (_load(root)[0].masks == ref.masks).all()


def test_images_in_every_format_pillow_reads_are_used(tmp_path):
    """Issue 20, item 7 (and the minor .gif one): .webp, .gif, .ppm, .tga, ... in train/good and
    test/<defect> are read, the fingerprint lists them, and a file in an image format Pillow
    cannot read is named in a warning instead of being left out silently."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=3, defects=("hole",), n_per_defect=1)
    cat = root / "widget"
    src = Image.open(cat / "train/good/000.png").convert("RGB")
    formats = [ext for ext in (".webp", ".gif", ".ppm", ".tga", ".jp2", ".qoi") if ext in mvtec.IMAGE_EXTENSIONS]
    assert {".webp", ".gif", ".ppm"} <= set(formats)
    for i, ext in enumerate(formats):
        src.save(cat / "train/good" / f"1{i:02d}{ext}")
    hole = Image.open(cat / "test/hole/000.png").convert("RGB")
    (cat / "test/hole/000.png").unlink()
    hole.save(cat / "test/hole/000.gif")  # the only defect image: it used to leave "no defective samples"
    (cat / "train/good/photo.heic").write_bytes(b"\0\0\0\x18ftypheic")  # an image, but no Pillow plugin reads it
    (cat / "train/good/notes.txt").write_text("not an image: ignored without a word")
    train, caught = _load(root, split="train", val_fraction=0.0)
    assert len(train) == 3 + len(formats), train.paths
    said = [m for m in caught if "skipped" in m]
    assert len(said) == 1 and "photo.heic" in said[0] and "1 in train/good" in said[0] and "notes.txt" not in said[0]
    test, _ = _load(root)
    assert test.labels.tolist() == [0, 0, 1] and test.has_masks and test.masks[2].sum() > 0
    files = set(data_fingerprint(root, "widget").files)
    assert {f"train/good/1{i:02d}{ext}" for i, ext in enumerate(formats)} | {"test/hole/000.gif"} <= files
    assert "train/good/photo.heic" not in files


def test_test_images_that_are_copies_of_training_or_other_label_images_are_said_once(tmp_path, monkeypatch):
    """Issue 20, item 8: a leak (a test image byte-identical to a training image) and one image
    under two labels (test/good and test/<defect>): one warning each, naming the count and the
    first pair, from the hashes the data fingerprint computed (no file is read twice)."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    cat = root / "widget"
    shutil.copy(cat / "train/good/003.png", cat / "test/good/007.png")
    shutil.copy(cat / "train/good/005.png", cat / "test/hole/009.png")
    shutil.copy(cat / "test/scratch/001.png", cat / "test/good/008.png")
    data_fingerprint(root, "widget")
    reads = []
    with monkeypatch.context() as m:
        m.setattr(filehash, "hash_file", lambda path: reads.append(path))
        ds, caught = _load(root)
    assert reads == []  # every hash came from the fingerprint's memo
    leak = [m for m in caught if "byte-identical to training images" in m]
    assert len(leak) == 1 and leak[0].startswith("2 test image(s) of widget")
    assert "test/good/007.png = train/good/003.png" in leak[0] and "remove them" in leak[0]
    both = [m for m in caught if "also in test/good" in m]
    assert len(both) == 1 and both[0].startswith("1 defective test image(s) of widget")
    assert "test/scratch/001.png = test/good/008.png" in both[0]
    clean = make_tiny_mvtec(tmp_path / "clean", categories=("widget",))
    assert not [m for m in _load(clean)[1] if "byte-identical" in m or "also in test/good" in m]


def test_link_loops_name_the_link_and_fail_only_their_category(tmp_path, capsys, monkeypatch):
    """Issue 20, minor: a train/good link that loops is a sentence about the link (not "unknown
    category"), and a stray looping link in one category fails that category only."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    root = make_tiny_mvtec(tmp_path / "data", categories=("fine", "looped", "stray"), n_train=4,
                           gray_categories=(), defects=("hole",), n_per_defect=1)
    good = root / "looped" / "train" / "good"
    shutil.rmtree(good)
    good.symlink_to("good")  # itself
    (root / "stray" / "test" / "hole" / "001.png").symlink_to("001.png")
    (root / "stray" / "train" / "good" / "loop").symlink_to("loop")  # not an image name: ignored
    assert models.list_categories(root) == ["fine", "looped", "stray"]
    dataset_error(lambda: models.MVTecAD(root, "looped", "train"), str(good), "loops", "fix or remove the link")
    csv = tmp_path / "r.csv"
    code = main(["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--eval-size", "32", "--results-csv", str(csv), "--checkpoint-dir",
                 str(tmp_path / "ck"), "--no-progress", "--num-threads", "1",
                 "--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert pd.read_csv(csv)["category"].tolist() == ["fine"]
    assert "unknown categor" not in err and "Traceback" not in err
    assert f"{good} is a symbolic link that loops" in err
    assert f"{root / 'stray' / 'test' / 'hole' / '001.png'} is a symbolic link that loops" in err
