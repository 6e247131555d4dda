"""models/mvtec/listing.py: which files of a category the loader reads (tolerant names, masks beside
the images, links), the categories of a root, the dataset's name and a category's type. Every case
writes real files into tmp_path; the end-to-end symptoms run the real command line in-process."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import models
from helpers import TINY_CAE_SET, cae_run_args, dataset_error, make_tiny_mvtec
from loader_helpers import good_folder, load, mask_files, masks_beside_images, reference
from models import mvtec
from pipeline import demo_data
from pipeline.__main__ import main
from pipeline.fingerprint import data_fingerprint

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


# --------------------------------------------------------------------------- the listing


def test_list_files_lists_each_test_image_with_its_label_defect_type_and_mask(tiny_mvtec):
    listing = mvtec.list_files(tiny_mvtec, "widget")
    widget = Path(tiny_mvtec) / "widget"
    assert listing.folder == widget and [p.name for p in listing.train] == [f"{i:03d}.png" for i in range(8)]
    assert [p.relative_to(widget).as_posix() for p in listing.test] == [
        "test/good/000.png", "test/good/001.png", "test/hole/000.png", "test/hole/001.png",
        "test/scratch/000.png", "test/scratch/001.png"]
    assert listing.labels == [0, 0, 1, 1, 1, 1] and listing.defects == ["good"] * 2 + ["hole"] * 2 + ["scratch"] * 2
    assert listing.masks[:2] == [None, None]
    assert [m.relative_to(widget).as_posix() for m in listing.masks[2:]] == [
        "ground_truth/hole/000_mask.png", "ground_truth/hole/001_mask.png",
        "ground_truth/scratch/000_mask.png", "ground_truth/scratch/001_mask.png"]
    assert listing.hints == {} and listing.refused == {} and listing.skipped == [] and listing.test_problem is None
    assert listing.paths() == sorted({*listing.train, *listing.test, *listing.masks[2:]}) and len(listing.paths()) == 18
    listing.raise_refused(listing.paths())  # nothing refused: no error


def test_list_categories_name_and_type(tiny_mvtec, tmp_path):
    assert models.list_categories(tiny_mvtec) == ["fabric", "widget"]
    assert mvtec.dataset_name(tiny_mvtec) == Path(tiny_mvtec).name
    assert mvtec.category_type(tiny_mvtec, "widget") == "custom"
    mv = make_tiny_mvtec(tmp_path / "mvtec", categories=("grid", "bottle"), n_train=1, defects=(), n_test_good=1)
    assert mvtec.dataset_name(mv) == "mvtec_ad"
    assert mvtec.category_type(mv, "grid") == "texture" and mvtec.category_type(mv, "bottle") == "object"


def test_the_dataset_name_does_not_depend_on_which_categories_are_present(tmp_path):
    tiny = dict(n_train=1, n_test_good=1, defects=())
    mine = make_tiny_mvtec(tmp_path / "my_parts", categories=("screw", "bottle"), **tiny)
    assert mvtec.dataset_name(mine) == "my_parts"  # MVTec AD's category names, but the user's own data
    make_tiny_mvtec(mine, categories=("widget",), **tiny)
    assert mvtec.dataset_name(mine) == "my_parts"  # a new category renames nothing: no job retrains for it
    for folder in ("mvtec_anomaly_detection", "MVTec-AD"):  # MVTec AD as its archive or README names it
        mv = make_tiny_mvtec(tmp_path / folder, categories=("screw",), **tiny)
        assert mvtec.dataset_name(mv) == "mvtec_ad"
        make_tiny_mvtec(mv, categories=("widget",), **tiny)
        assert mvtec.dataset_name(mv) == "mvtec_ad"
    (mine / "DATASET.json").write_text(json.dumps({"name": "parts v2"}))  # a name of one's own
    assert mvtec.dataset_name(mine) == "parts v2"
    demo = demo_data.make_synthetic_dataset(tmp_path / "d", image_size=32, n_train=4, n_test_good=1, n_per_defect=1,
                                            categories=["weave"])
    assert mvtec.dataset_name(demo) == "demo"


def test_extensions_hidden_files_and_unicode_names(tmp_path):
    folder = good_folder(tmp_path)
    img = Image.fromarray(np.full((10, 10, 3), 100, np.uint8))
    for name in ("a.PNG", "b.jpeg", "c.JPG", "d.bmp", "e.TIF", "f.tiff", "g h.png", "ñandú 画像.png"):
        img.save(folder / name)
    img.save(folder / ".hidden.png", format="PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.PNG").write_bytes(b"macOS resource fork")
    ds = models.MVTecAD(tmp_path, "odd", image_size=4, val_fraction=0.0)
    assert len(ds) == 8 and "ñandú 画像.png" in {Path(p).name for p in ds.paths}


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
    train, caught = load(root, split="train", val_fraction=0.0)
    assert len(train) == 3 + len(formats), train.paths
    said = [m for m in caught if "skipped" in m]
    assert len(said) == 1 and "photo.heic" in said[0] and "1 in train/good" in said[0] and "notes.txt" not in said[0]
    test, _ = load(root)
    assert test.labels.tolist() == [0, 0, 1] and test.has_masks and test.masks[2].sum() > 0
    files = set(data_fingerprint(root, "widget").files)
    assert {f"train/good/1{i:02d}{ext}" for i, ext in enumerate(formats)} | {"test/hole/000.gif"} <= files
    assert "train/good/photo.heic" not in files


# --------------------------------------------------------------------------- roots and categories


def test_missing_and_empty_root(tmp_path):
    dataset_error(lambda: models.MVTecAD(tmp_path / "nope", "widget"), "nope", "mvtec_anomaly_detection", "--data-root",
                  "demo-data")
    dataset_error(lambda: models.list_categories(tmp_path / "nope"), "does not exist")
    dataset_error(lambda: models.list_categories(tmp_path), "no category", str(tmp_path))
    root = make_tiny_mvtec(tmp_path / "r", categories=("widget",), n_train=1, defects=())
    dataset_error(lambda: models.list_categories(root / "widget"), "category folder", "parent")


def test_unknown_category_lists_found(tiny_mvtec):
    dataset_error(lambda: models.MVTecAD(tiny_mvtec, "bottle"), "'bottle'", "fabric, widget")


@pytest.mark.parametrize("name", ["Good", "ok", "normal"])
def test_good_test_folder_under_another_name_is_refused(tmp_path, name):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    (root / "widget" / "test" / "good").rename(root / "widget" / "test" / name)
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=32), f"test/{name}", "rename it to good")


# --------------------------------------------------------------------------- where the masks are


def test_masks_beside_the_test_images_are_masks_not_test_images(tmp_path):
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "beside", categories=("widget",))
    masks_beside_images(root)
    test = root / "widget" / "test"
    (test / "scratch" / "001_mask.png").rename(test / "scratch" / "001_MASK.PNG")  # any case
    ds, caught = load(root)
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
    shutil.copy(mask_files(root)[0], stray)
    ds, caught = load(root)
    assert len(ds) == 6 and str(stray) not in ds.paths
    said = [m for m in caught if "beside" in m]
    assert len(said) == 1 and str(stray) in said[0] and "no image" in said[0]


def test_mask_names_in_other_cases_and_formats_are_found(tmp_path):
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "names", categories=("widget",))
    gt = root / "widget" / "ground_truth"
    renames = {"hole/000_mask.png": "hole/000_MASK.png", "hole/001_mask.png": "hole/001_Mask.PNG",
               "scratch/000_mask.png": "scratch/000_mask.bmp", "scratch/001_mask.png": "scratch/001.tif"}
    for old, new in renames.items():
        Image.open(gt / old).save(gt / new)
        (gt / old).unlink()
    (gt / "scratch").rename(gt / "Scratch")  # the defect folder's name in another case than test/scratch
    ds, caught = load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), caught


def test_masks_that_match_no_image_are_named_in_the_missing_mask_warning(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    for f in mask_files(root):  # 000_mask.png -> 0_mask.png: the images are 000.png
        f.rename(f.with_name(f"{int(f.name[:3])}_mask.png"))
    ds, caught = load(root)
    said = [m for m in caught if "no mask" in m]
    assert not ds.has_masks and len(said) == 1
    assert "4 mask files in ground_truth/ match no test image" in said[0] and "0_mask.png" in said[0]


def test_masks_in_a_misnamed_folder_are_pointed_at(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    (root / "widget" / "ground_truth").rename(root / "widget" / "Ground Truth")
    ds, caught = load(root)
    said = [m for m in caught if "no mask" in m]
    assert not ds.has_masks and len(said) == 1 and "'Ground Truth'" in said[0] and "ground_truth" in said[0]


# --------------------------------------------------------------------------- links


def test_links_work_and_a_broken_link_is_named(tmp_path):
    _, ref = reference(tmp_path)
    root = tmp_path / "linked"
    elsewhere = make_tiny_mvtec(root / "store", categories=("widget",))  # elsewhere in the data root
    (root / "widget").mkdir(parents=True)
    for part in ("train", "ground_truth"):  # linked folders
        (root / "widget" / part).symlink_to(elsewhere / "widget" / part, target_is_directory=True)
    for f in (elsewhere / "widget" / "test").rglob("*.png"):  # linked files
        link = root / "widget" / "test" / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    ds, _ = load(root)
    assert len(ds) == 6 and (ds.masks == ref.masks).all()
    # A category, or the whole data root, linked from elsewhere is read where it lies.
    (tmp_path / "root_link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "cat_links").mkdir()
    (tmp_path / "cat_links" / "widget").symlink_to(elsewhere / "widget", target_is_directory=True)
    for other in (tmp_path / "root_link", tmp_path / "cat_links"):
        assert (load(other)[0].masks == ref.masks).all()
    dangling = root / "widget" / "test" / "hole" / "002.png"
    dangling.symlink_to(tmp_path / "moved_away.png")
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=32), str(dangling), "broken",
                  "fix or remove")


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
    code = main(cae_run_args(root, tmp_path, "--eval-size", "32", *TINY_CAE_SET))
    err = capsys.readouterr().err
    assert code == 1, err
    assert pd.read_csv(csv)["category"].tolist() == ["fine"]
    assert "unknown categor" not in err and "Traceback" not in err
    assert f"{good} is a symbolic link that loops" in err
    assert f"{root / 'stray' / 'test' / 'hole' / '001.png'} is a symbolic link that loops" in err
