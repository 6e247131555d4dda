"""models/mvtec/notes.py: the warnings a split gives about odd files, one per kind, each naming a
count and the first file, in one order (docs/faults.md quotes them)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import models
from helpers import make_tiny_mvtec
from loader_helpers import load, mask_files, reference
from models import filehash
from models.mvtec import decode
from pipeline.fingerprint import data_fingerprint

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


def test_missing_mask_is_allowed_with_a_warning(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, masks=False)
    with pytest.warns(UserWarning, match="no mask"):
        ds = models.MVTecAD(root, "widget", "test", image_size=16)
    assert not ds.has_masks and len(ds) == 6 and ds.masks.sum() == 0


def test_inverted_masks_are_reported_once_naming_the_first_file(tmp_path):
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "inv", categories=("widget",))
    files = mask_files(root)
    for f in files:  # white = normal: the defect saved black on white
        Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    ds, caught = load(root)
    said = [m for m in caught if "inverted" in m]
    assert len(said) == 1, caught  # one sentence for the category, not one per file
    for words in ("4 of the 4 masks", str(files[0]), "save defects white (255) on black (0)"):
        assert words in said[0]
    # Not silently "fixed": the masks are read as written, the user decides.
    assert (ds.masks[ds.labels == 1].float().mean(dim=(1, 2)) > 0.5).all()
    # A usual category says nothing of the kind.
    assert not any("inverted" in m for m in load(make_tiny_mvtec(tmp_path / "ok", categories=("widget",)))[1])
    assert ref.masks.sum() > 0


def test_one_inverted_mask_among_good_ones_is_counted(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    f = mask_files(root)[-1]
    Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    said = [m for m in load(root)[1] if "inverted" in m]
    assert len(said) == 1 and "1 of the 4 masks" in said[0] and str(f) in said[0]


def test_empty_masks_are_counted_once_and_a_thin_defect_lost_by_resizing_is_not_empty(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    files = mask_files(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files[0])  # saved without its defect
    thin = np.zeros((32, 32), np.uint8)
    thin[1, 1] = 255  # one pixel: gone at 8 px (nearest), still there at the evaluation size
    Image.fromarray(thin).save(files[1])
    ds, caught = load(root, image_size=8)
    said = [m for m in caught if "empty" in m]
    assert len(said) == 1 and "1 of the 4 masks" in said[0] and str(files[0]) in said[0], caught
    assert ds.masks_at(32)[ds.mask_paths.index(files[1])].sum() == 1


def test_an_empty_mask_is_read_once_and_from_a_cache_read_at_its_own_size(tmp_path, monkeypatch):
    """Telling an empty mask from a thin defect lost by resizing reuses what decoding the mask
    found; a mask taken from the memory cache is read at its own size for it (once)."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    files = mask_files(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files[0])
    thin = np.zeros((32, 32), np.uint8)
    thin[1, 1] = 255
    Image.fromarray(thin).save(files[1])
    reads = []
    real = decode.read_mask
    monkeypatch.setattr(decode, "read_mask", lambda path: reads.append(path) or real(path))
    _, first = load(root, image_size=8)
    assert sorted(reads) == files  # each mask once
    reads.clear()
    _, again = load(root, image_size=8)  # from the memory cache
    assert reads == files[:2] and again == first  # the two empty at 8 px, at their own size


def test_two_files_of_one_name_in_a_folder_are_reported(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    folder = root / "widget" / "test" / "hole"
    Image.open(folder / "000.png").convert("RGB").save(folder / "000.jpg")  # a converted copy left behind
    ds, caught = load(root)
    said = [m for m in caught if "same name" in m]
    assert len(said) == 1 and "000.jpg" in said[0] and "000.png" in said[0]


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
        ds, caught = load(root)
    assert reads == []  # every hash came from the fingerprint's memo
    leak = [m for m in caught if "byte-identical to training images" in m]
    assert len(leak) == 1 and leak[0].startswith("2 test image(s) of widget")
    assert "test/good/007.png = train/good/003.png" in leak[0] and "remove them" in leak[0]
    both = [m for m in caught if "also in test/good" in m]
    assert len(both) == 1 and both[0].startswith("1 defective test image(s) of widget")
    assert "test/scratch/001.png = test/good/008.png" in both[0]
    clean = make_tiny_mvtec(tmp_path / "clean", categories=("widget",))
    assert not [m for m in load(clean)[1] if "byte-identical" in m or "also in test/good" in m]


def test_the_warnings_come_one_per_kind_in_one_order(tmp_path):
    """Every kind at once: masks beside the images, a skipped file, a leak, one image under two
    labels, a missing mask, an empty and an inverted mask, two files of one name."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    cat, files = root / "widget", mask_files(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files[0])  # hole/000: empty
    Image.fromarray(255 - np.asarray(Image.open(files[2]))).save(files[2])  # scratch/000: inverted
    shutil.copy(cat / "test/hole/001.png", cat / "test/hole/005.png")  # no mask
    shutil.copy(cat / "train/good/003.png", cat / "test/good/007.png")  # a leak
    shutil.copy(cat / "test/hole/001.png", cat / "test/good/008.png")  # under two labels
    Image.open(cat / "test/hole/000.png").convert("RGB").save(cat / "test/hole/000.jpg")  # same name
    (cat / "test/good/photo.heic").write_bytes(b"\0\0\0\x18ftypheic")  # skipped
    shutil.move(files[3], cat / "test" / "scratch" / files[3].name)  # scratch/001's mask beside its image
    _, caught = load(root)
    kinds = ["beside the images", "Pillow cannot read", "byte-identical", "also in test/good", "have no mask",
             "are empty", "probably inverted", "same name"]
    assert len(caught) == len(kinds) and all(kind in text for kind, text in zip(kinds, caught)), caught
    assert "2 of the 5 masks of widget are empty" in caught[5]  # hole/000.png and its copy 000.jpg share a mask
