"""Real data in MVTec layout (pipeline/real_data.py, `python -m pipeline real-data elpv`): the
split of the ELPV labels (seeded, capped, uncertain cells left out), the files (copied byte for
byte, under their own names, no masks), the folders it writes into, reuses or refuses, the bad
inputs (package missing, damaged labels, bad options), and a grid that trains on the output.
Every test runs on a tiny fake of the package's layout (labels.csv + images/): the package
itself is never needed."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models
from helpers import TINY, TRAIN, one_error_line, run_grid
from models import mvtec
from pipeline import real_data
from pipeline.__main__ import main

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds

# (cell type, probability, count): as the package's labels.csv, in miniature
FAKE_LABELS = (("mono", "1.0", 5), ("mono", "0.0", 20), ("mono", "0.3333333333333333", 3),
               ("mono", "0.6666666666666666", 2), ("poly", "0.0", 12), ("poly", "1.0", 4),
               ("poly", "0.3333333333333333", 1))


def fake_elpv(folder: Path, labels=FAKE_LABELS, size: int = 32) -> Path:
    """A folder in the package's layout: labels.csv ("images/cellNNNN.png  P  TYPE") and
    images/cellNNNN.png, 8-bit grayscale; a defective cell (p > 0) has a dark crack."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    lines, i = [], 0
    yy, xx = np.mgrid[0:size, 0:size] / size
    for cell_type, p, count in labels:
        for _ in range(count):
            i += 1
            name = f"cell{i:04d}.png"
            img = 128 + 40 * np.sin(2 * np.pi * 4 * xx) * (0.5 if cell_type == "mono" else 1) \
                + rng.normal(0, 4, (size, size))
            if float(p) > 0:
                img[size // 2 - 1 : size // 2 + 2, 4 : size - 4] = 10
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(folder / "images" / name)
            lines.append(f"images/{name}  {p}                 {cell_type}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    return fake_elpv(tmp_path / "elpv_src")


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def real_data_args(out, source, *extra) -> list[str]:
    return ["real-data", "elpv", "--out", str(out), "--source", str(source), *extra]


# ---------------------------------------------------------------- the split and the files


def test_split_caps_train_keeps_the_test_share_and_leaves_the_uncertain_out(source):
    cells = real_data.read_labels(real_data.ElpvSource(source))
    split = real_data.split_cells(cells, seed=0, max_train=240, test_good_fraction=0.25)
    assert set(split.files) == {"elpv_mono", "elpv_poly"}
    counts = split.counts()
    # 20 defect-free mono cells: at least 25 % (5) to test/good, the cap of 240 not reached.
    assert counts["elpv_mono"] == {"train/good": 15, "test/good": 5, "test/defect": 5,
                                   "left out (p = 1/3)": 3, "left out (p = 2/3)": 2}
    assert counts["elpv_poly"] == {"train/good": 9, "test/good": 3, "test/defect": 4, "left out (p = 1/3)": 1}
    capped = real_data.split_cells(cells, seed=0, max_train=6, test_good_fraction=0.25).counts()
    assert (capped["elpv_mono"]["train/good"], capped["elpv_mono"]["test/good"]) == (6, 14)  # the rest to test
    by_name = {c.name: c for c in cells}
    for folders in split.files.values():
        assert all(by_name[n].probability == 0 for n in folders["train/good"] + folders["test/good"])
        assert all(by_name[n].probability == 1 for n in folders["test/defect"])
        assert not set(folders["train/good"]) & set(folders["test/good"])


def test_the_train_choice_is_seeded(source):
    cells = real_data.read_labels(real_data.ElpvSource(source))
    train = {seed: real_data.split_cells(cells, seed=seed, max_train=6, test_good_fraction=0.25)
             .files["elpv_mono"]["train/good"] for seed in (0, 0, 1)}
    again = real_data.split_cells(cells, seed=0, max_train=6, test_good_fraction=0.25).files["elpv_mono"]
    assert again["train/good"] == train[0] and train[1] != train[0]
    # The order is by a hash of seed and name: a cell keeps its rank among the others whatever else is listed.
    names = [f"cell{i:04d}.png" for i in range(50)]
    assert [n for n in real_data.seeded_order(names, 3) if n in names[:20]] == real_data.seeded_order(names[:20], 3)


def test_output_is_mvtec_layout_copied_byte_for_byte_and_the_same_per_seed(tmp_path, source, capsys):
    assert main(real_data_args(tmp_path / "a", source)) == 0
    printed = capsys.readouterr().out
    assert main(real_data_args(tmp_path / "b", source)) == 0
    a = tmp_path / "a"
    assert tree_digest(a) == tree_digest(tmp_path / "b")  # same seed: same split, same bytes
    for category in ("elpv_mono", "elpv_poly"):
        assert sorted(p.name for p in (a / category).iterdir()) == ["test", "train"]  # no ground_truth/
        assert sorted(p.name for p in (a / category / "test").iterdir()) == ["defect", "good"]
        for image in (a / category).rglob("*.png"):
            assert image.read_bytes() == (source / "images" / image.name).read_bytes()
    labels = {line.split()[0][len("images/"):]: float(line.split()[1]) for line in
              (source / "labels.csv").read_text().splitlines()}
    written = [p.name for p in a.rglob("*.png")]
    assert len(written) == len(set(written)) == sum(p in (0.0, 1.0) for p in labels.values())  # uncertain left out
    assert models.list_categories(a) == ["elpv_mono", "elpv_poly"]
    assert mvtec.dataset_name(a) == "elpv" and mvtec.category_type(a, "elpv_mono") == "texture"
    readme, licence = (a / "README.txt").read_text(), (a / "license.txt").read_text()
    for text in (printed, readme):
        assert "elpv_mono" in text and "15" in text and "left out" in text and "CC BY-NC-SA 4.0" in text
        assert real_data.SOURCE_URL in text
    table = [line.split() for line in printed.splitlines()]
    header = ["category", "train/good", "test/good", "test/defect", "left", "out", "p=1/3", "left", "out", "p=2/3"]
    assert header in table
    assert ["elpv_mono", "15", "5", "5", "3", "2"] in table and ["elpv_poly", "9", "3", "4", "1", "0"] in table
    assert "CC BY-NC-SA 4.0" in licence and "Deitsch" in licence
    assert f"python -m pipeline run --data-root {a}" in printed
    marker = json.loads((a / "DATASET.json").read_text())
    assert marker["split"]["seed"] == 0 and marker["counts"]["elpv_poly"]["test/defect"] == 4


def test_a_grid_trains_on_it_with_image_metrics_only(tmp_path, source):
    root = real_data.write_elpv(tmp_path / "elpv", source=source).root
    df = run_grid(root, ["elpv_mono"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                  results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    row = df.iloc[0]
    assert (row["dataset"], row["category"], row["category_type"]) == ("elpv", "elpv_mono", "texture")
    assert 0 <= row["image_auroc"] <= 1 and not math.isnan(row["f1"])
    assert math.isnan(row["pixel_auroc"]) and math.isnan(row["aupro"])  # no masks: pixel metrics undefined
    assert row["n_test"] == 10 and row["n_train"] + row["n_val"] == 15


# ---------------------------------------------------------------- the output folder


def test_a_rerun_with_the_same_seed_is_a_no_op_and_with_another_is_refused(tmp_path, source, capsys):
    out = tmp_path / "elpv"
    assert main(real_data_args(out, source)) == 0
    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(real_data_args(out, source)) == 0
    assert "already holds this split (same labels, seed and options): nothing written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes  # nothing rewritten
    before = tree_digest(out)
    assert main(real_data_args(out, source, "--seed", "1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds the ELPV split of seed 0" in line and "delete" in line and "--out" in line
    assert main(real_data_args(out, source, "--max-train", "5")) == 2
    assert "--max-train 240" in one_error_line(capsys.readouterr().err)
    assert tree_digest(out) == before


def test_a_folder_that_is_not_an_elpv_output_is_never_written_into(tmp_path, source, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(real_data_args(out, source)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is not empty and is not an ELPV output" in line and "--out" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(real_data_args(empty, source)) == 0  # an empty folder is fine
    assert (empty / "DATASET.json").is_file()


def test_a_changed_previous_output_is_refused(tmp_path, source, capsys):
    out = real_data.write_elpv(tmp_path / "elpv", source=source).root
    next((out / "elpv_mono" / "train" / "good").iterdir()).unlink()
    assert main(real_data_args(out, source)) == 2
    assert "its files changed since (1 missing, 0 added" in one_error_line(capsys.readouterr().err)


def test_an_unwritable_out_folder_is_one_sentence_and_leaves_nothing(tmp_path, source, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(real_data_args(blocker / "elpv", source)) == 2  # its parent is a file
    line = one_error_line(capsys.readouterr().err)
    assert "cannot create the folder for the ELPV output" in line and "pass --out a folder you can write to" in line
    assert main(real_data_args(blocker, source)) == 2
    assert "is a file, not a folder" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_folder_is_one_sentence(tmp_path, source, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert main(real_data_args(parent / "elpv", source)) == 2
        assert "is not writable" in one_error_line(capsys.readouterr().err)
    finally:
        parent.chmod(0o700)


def test_an_error_while_copying_leaves_no_half_dataset(tmp_path, source, monkeypatch):
    calls = []

    def copy_then_fail(a, b):
        calls.append(a)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return shutil.copyfile(a, b)

    monkeypatch.setattr(real_data.shutil, "copyfile", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        real_data.write_elpv(tmp_path / "out" / "elpv", source=source)
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor a hidden temporary folder


# ---------------------------------------------------------------- bad input


def test_the_package_missing_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # find_spec then answers "not installed"
    assert main(["real-data", "elpv", "--out", str(tmp_path / "elpv")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "pip install elpv-dataset (about 90 MB; or pip install -e .[elpv])" in line
    assert not (tmp_path / "elpv").exists()


@pytest.mark.parametrize("damage, words", [
    (lambda s: (s / "labels.csv").write_text("images/cell0001.png 0.0\n"), "is not 'images/<file> <probability>"),
    (lambda s: (s / "labels.csv").write_text("images/cell0001.png 1.5 mono\n"), "is not a number from 0 to 1"),
    (lambda s: (s / "labels.csv").write_text("images/../x.png 0.0 mono\n"), "is not 'images/<file>"),
    (lambda s: (s / "labels.csv").write_text("images/cell0001.png 0.0 Mono-X\n"), "is not a plain lower-case"),
    (lambda s: (s / "labels.csv").write_text("images/cell0001.png 0.0 mono\nimages/cell0001.png 1.0 mono\n"),
     "line 2 of"),
    (lambda s: (s / "images" / "cell0003.png").unlink(), "1 image(s) that"),
    (lambda s: (s / "labels.csv").unlink(), "cannot read the ELPV labels"),
], ids=["fields", "probability", "path", "cell type", "listed twice", "image missing", "no labels"])
def test_damaged_labels_or_images_are_one_sentence(tmp_path, source, capsys, damage, words):
    damage(source)
    assert main(real_data_args(tmp_path / "elpv", source)) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "elpv").exists()


@pytest.mark.parametrize("option", [["--max-train", "1"], ["--test-good-fraction", "0"],
                                    ["--test-good-fraction", "1"], ["--test-good-fraction", "nan"]])
def test_bad_options_are_one_sentence(tmp_path, source, capsys, option):
    assert main(real_data_args(tmp_path / "elpv", source, *option)) == 2
    assert option[0] in one_error_line(capsys.readouterr().err)


def test_too_few_defect_free_cells_is_one_sentence(tmp_path, capsys):
    source = fake_elpv(tmp_path / "src", labels=(("mono", "0.0", 2), ("mono", "1.0", 2)))
    assert main(real_data_args(tmp_path / "elpv", source)) == 2
    assert "only 2 defect-free mono cells" in one_error_line(capsys.readouterr().err)


def test_the_installed_package_has_the_layout_read_here():
    """Only where elpv-dataset is installed (never needed by the suite): labels.csv and images/."""
    pytest.importorskip("elpv_dataset")
    source = real_data.locate_elpv()
    cells = real_data.read_labels(source)
    assert len(cells) == 2624 and {c.cell_type for c in cells} == {"mono", "poly"}
    assert sorted({round(3 * c.probability) for c in cells}) == [0, 1, 2, 3]  # 0, 1/3, 2/3, 1
