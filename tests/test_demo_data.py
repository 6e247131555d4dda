"""The demo dataset (pipeline/demo_data.py): the generator (deterministic, complete, exact masks,
readable by the loader), the folders it rewrites and those it refuses to (files it did not write,
a crafted marker, links), and the data-root choice (``find_or_make_dataset``): one rule and one
message for the command line and the notebook, the demo only when no root is named and the
default folder is absent."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import models
import pipeline.__main__
from helpers import REPO, make_tiny_mvtec, one_error_line, run_args, tree
from models import mvtec
from models.errors import DatasetError
from pipeline import demo_data
from pipeline.__main__ import main
from pipeline.results import read_results

NOTEBOOK = REPO / "evaluate_all_models.ipynb"
TINY_DEMO = dict(image_size=32, n_train=4, n_test_good=1, n_per_defect=1, categories=["weave"])
SMALL_DEMO = dict(image_size=64, n_train=6, n_test_good=2, n_per_defect=2)

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo generator at a tiny size, wherever it is called from (the CLI passes no options)."""
    real = demo_data.make_synthetic_dataset
    monkeypatch.setattr(demo_data, "make_synthetic_dataset", lambda out, **kw: real(out, **{**TINY_DEMO, **kw}))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def notebook_cells(*indices: int) -> str:
    """The source of the notebook's code cells at ``indices`` (0 = the parameters cell)."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    return "\n".join("".join(code[i]["source"]) for i in indices)


# ---------------------------------------------------------------- the generator


def test_demo_is_deterministic_complete_and_readable(tmp_path):
    a = demo_data.make_synthetic_dataset(tmp_path / "a", seed=1, **SMALL_DEMO)
    b = demo_data.make_synthetic_dataset(tmp_path / "b", seed=1, workers=1, **SMALL_DEMO)
    assert a == tmp_path / "a" and _digest(a) == _digest(b)
    c = demo_data.make_synthetic_dataset(tmp_path / "c", seed=2, **SMALL_DEMO)
    assert _digest(a) != _digest(c)

    assert mvtec.dataset_name(a) == "demo" and models.list_categories(a) == sorted(demo_data.CATEGORIES)
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
    demo_data.make_synthetic_dataset(a, seed=1, **SMALL_DEMO)
    assert (a / "DATASET.json").stat().st_mtime_ns == stamp
    demo_data.make_synthetic_dataset(a, seed=2, **SMALL_DEMO)
    assert _digest(a) == _digest(c)


@pytest.mark.parametrize("category", sorted(demo_data.CATEGORIES))
def test_demo_masks_are_exact(category):
    """The mask is the set of pixels a defect changed: nearly all of it changed, little else."""
    for d_i, defect in enumerate(demo_data.DEFECTS[demo_data.CATEGORIES[category]]):
        rng = np.random.default_rng(d_i)
        img, cov, bg = demo_data.RENDERERS[category](rng, 128)
        bad, mask = demo_data._defect(defect, rng, img, cov, bg)
        changed = np.abs(bad - img).max(axis=-1) > 0.02
        assert mask.sum() > 10, (category, defect)
        assert changed[mask].mean() > (0.5 if defect == "deformation" else 0.9), (category, defect)
        # Outside the mask only its antialiased rim changed (sub-half-pixel shifts for a warp).
        rim = ndimage.binary_dilation(mask, iterations=3 if defect == "deformation" else 1)
        assert (changed & ~rim).sum() < 0.05 * mask.sum() + 5, (category, defect)


def test_demo_default_scale_and_time(tmp_path):
    """Default settings (MVTec scale, 256 px) for one category; the full four-category timing is in bench/."""
    start = time.perf_counter()
    root = demo_data.make_synthetic_dataset(tmp_path / "demo", categories=["tablet"])
    seconds = time.perf_counter() - start
    assert 4 * seconds < 120, (
        f"one demo category took {seconds:.0f} s (budget: 30 s for four on an idle 2-core machine)"
    )
    assert len(list((root / "tablet" / "train" / "good").glob("*.png"))) == 60  # MVTec's smallest category
    assert len(list((root / "tablet" / "test" / "good").glob("*.png"))) >= 20
    defective = [p for d in demo_data.DEFECTS["object"] for p in (root / "tablet" / "test" / d).glob("*.png")]
    masks = list((root / "tablet" / "ground_truth").rglob("*_mask.png"))
    assert len(defective) >= 30 and len(masks) == len(defective)
    with Image.open(root / "tablet" / "train" / "good" / "000.png") as im:
        assert im.size == (256, 256) and im.mode == "RGB"


def test_ctrl_c_while_writing_the_demo_leaves_no_temp_folder(tmp_path, monkeypatch):
    def interrupted(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo_data, "_make_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_data.make_synthetic_dataset(tmp_path / "demo", **TINY_DEMO)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- folders it rewrites, and those it refuses to


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a demo dataset"):
        demo_data.make_synthetic_dataset(tmp_path, **SMALL_DEMO)
    assert (tmp_path / "mine.txt").exists()


def test_demo_data_out_refuses_to_delete_files_it_did_not_write(tmp_path, capsys):
    mydemo = demo_data.make_synthetic_dataset(tmp_path / "mydemo", **TINY_DEMO)  # a copy of the demo
    make_tiny_mvtec(mydemo, categories=("my_product",))
    (mydemo / "NOTES.txt").write_text("my notes")
    before = tree(mydemo)

    assert main(["demo-data", "--out", str(mydemo), "--seed", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "NOTES.txt" in line and "my_product/" in line and "nothing was deleted" in line
    assert tree(mydemo) == before and (mydemo / "NOTES.txt").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == ["mydemo"]  # no temp folder left beside it


def test_default_run_after_a_demo_version_change_keeps_the_users_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    demo = demo_data.make_synthetic_dataset(tmp_path / "data" / "demo", **TINY_DEMO)
    marker = json.loads((demo / demo_data.MARKER_FILE).read_text())
    (demo / demo_data.MARKER_FILE).write_text(json.dumps({**marker, "version": 0}))  # written by an older generator
    (demo / "NOTES.txt").write_text("my notes")
    real = demo_data.make_synthetic_dataset
    monkeypatch.setattr(demo_data, "make_synthetic_dataset",
                        lambda out, seed=0: real(out, seed, **TINY_DEMO))
    args = run_args("x", tmp_path / "r.csv", tmp_path, categories=("weave",), models=("cae",))
    assert main(args[:1] + args[3:]) == 2  # no --data-root: the default run's demo refresh
    assert "NOTES.txt" in one_error_line(capsys.readouterr().err)
    assert (demo / "NOTES.txt").read_text() == "my notes" and (demo / "weave" / "train" / "good").is_dir()
    assert not (tmp_path / "r.csv").exists()


def test_an_older_demo_is_replaced_whole_and_a_linked_demo_folder_stays_a_link(tmp_path, recwarn):
    store = tmp_path / "big_disk" / "demo_store"
    old = demo_data.make_synthetic_dataset(store, **TINY_DEMO)
    marker = json.loads((old / demo_data.MARKER_FILE).read_text())
    (old / demo_data.MARKER_FILE).write_text(json.dumps({**marker, "version": 0}))
    link = tmp_path / "demo"
    link.symlink_to(store, target_is_directory=True)

    out = demo_data.make_synthetic_dataset(link, seed=1, **TINY_DEMO)
    assert out == link and link.is_symlink() and os.readlink(link) == str(store)
    new = json.loads((store / demo_data.MARKER_FILE).read_text())
    assert new["seed"] == 1 and new["version"] == demo_data.VERSION
    # Every file of the old demo was the generator's, so nothing of it is left anywhere.
    assert sorted(p.name for p in store.parent.iterdir()) == ["demo_store"]
    assert not [w for w in recwarn if "kept" in str(w.message)]
    assert tree(store) == tree(demo_data.make_synthetic_dataset(tmp_path / "fresh", seed=1, **TINY_DEMO))


def files_outside(tmp_path: Path, folder: Path) -> dict[str, bytes]:
    """Every file under tmp_path that is not under ``folder``, with its bytes."""
    return {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*")
            if p.is_file() and folder not in p.parents}


def users_files(tmp_path: Path) -> None:
    """The user's files that the traversal spellings below would reach from the demo folder."""
    for rel in ("victim/widget/train/good/000.png", "victim/widget/test/good/000.png", "victim/widget/000.png",
                "victim/widget/000_mask.png", "train/good/000.png", "test/good/000.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"the user's " + rel.encode())


def crafted_marker(category: str = "weave", defect: str = "scratch") -> dict:
    """A demo marker (an older version, so it is rewritten) naming ``category`` and ``defect``."""
    return {"name": "demo", "version": 0, "seed": 0, "image_size": 32, "categories": {category: "texture"},
            "defects": {category: [defect]}, "counts": {"train": 1, "test_good": 1, "per_defect": 1}}


@pytest.mark.parametrize("category, defect", [
    ("../victim/widget", "scratch"), ("..", "scratch"), ("ABSOLUTE/victim/widget", "scratch"),
    ("weave/../../victim/widget", "scratch"), ("..\\victim\\widget", "scratch"), ("wid\x00get", "scratch"),
    ("weave", "../../../victim/widget"), (".hidden", "scratch"),
], ids=["dotdot", "parent", "absolute", "inner-dotdot", "backslash", "nul", "defect", "hidden"])
def test_a_crafted_demo_marker_never_deletes_outside_its_folder(tmp_path, capsys, monkeypatch, category, defect):
    category = category.replace("ABSOLUTE", str(tmp_path))
    users_files(tmp_path)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / demo_data.MARKER_FILE).write_text(json.dumps(crafted_marker(category, defect)))
    before = files_outside(tmp_path, demo)
    real = demo_data.make_synthetic_dataset
    monkeypatch.setattr(pipeline.__main__, "make_synthetic_dataset",
                        lambda out, seed=0: real(out, seed, **TINY_DEMO))

    assert main(["demo-data", "--out", str(demo)]) == 2
    line = one_error_line(capsys.readouterr().err)
    unsafe = defect if category == "weave" else category
    assert "not a plain" in line and repr(unsafe) in line and "nothing was deleted" in line, line
    assert files_outside(tmp_path, demo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["demo", "victim", "train", "test"])  # no temp folder
    with pytest.raises(DatasetError, match="not a plain"):  # the default run and the notebook call this
        demo_data.make_synthetic_dataset(demo, **TINY_DEMO)
    assert files_outside(tmp_path, demo) == before


def test_a_demo_category_that_is_a_link_is_never_followed(tmp_path, capsys):
    """A link in the demo folder is refused as a foreign entry; and the deletion itself never
    reaches through a link that appears after that check."""
    users_files(tmp_path)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / demo_data.MARKER_FILE).write_text(json.dumps(crafted_marker("widget")))
    (demo / "widget").symlink_to(tmp_path / "victim" / "widget", target_is_directory=True)
    before = files_outside(tmp_path, demo)
    with pytest.raises(DatasetError, match="widget/"):
        demo_data.make_synthetic_dataset(demo, **TINY_DEMO)
    demo_data._remove_demo(demo, demo_data._demo_files(crafted_marker("widget")))
    assert files_outside(tmp_path, demo) == before and (demo / "widget").is_symlink()


# ---------------------------------------------------------------- the data root


def test_a_named_root_that_does_not_exist_is_one_sentence_on_both_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as e:
        demo_data.find_or_make_dataset("data/bsae", tmp_path / "demo", **TINY_DEMO)
    message = str(e.value)
    assert message.startswith("data root data/bsae does not exist; fix DATA_ROOT (or AD_DATA_ROOT / MVTEC_ROOT), "
                              "or leave it empty")
    assert "--data-root" in message and not (tmp_path / "demo").exists()  # no demo written for a mistyped root
    assert main(["run", "--data-root", "data/bsae"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"  # the same sentence from the command line
    monkeypatch.setenv("MVTEC_ROOT", "data/bsae")
    assert main(["run"]) == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "data" / "demo").exists()


def test_a_named_root_is_used_as_it_is(tmp_path):
    root = make_tiny_mvtec(tmp_path / "base", categories=("widget",))
    assert demo_data.find_or_make_dataset(str(root), tmp_path / "demo") == root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no category folders"):  # never a switch to the demo
        demo_data.find_or_make_dataset(empty, tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_the_demo_only_when_no_root_is_named_and_the_default_is_absent(tmp_path, monkeypatch, tiny_demo):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    said = []
    for named in ("", None):
        assert demo_data.find_or_make_dataset(named, tmp_path / "demo", log=said.append) == tmp_path / "demo"
    sentence = (f"No dataset found at ./mvtec_anomaly_detection, so the built-in demo dataset is used (written to "
                f"{tmp_path / 'demo'}); its rows are named 'demo' in the results.")
    assert said == [sentence, sentence] and (tmp_path / "demo" / "weave").is_dir()
    # The command line: the same rule and the same sentence, with its demo folder.
    said.clear()
    assert pipeline.__main__._data_root(None, said.append) == Path("data/demo")
    assert said == [sentence.replace(str(tmp_path / "demo"), "data/demo")]
    # An existing default folder is used as it is: with categories it is the root, without them an error.
    make_tiny_mvtec(tmp_path / "mvtec_anomaly_detection", categories=("widget",))
    assert demo_data.find_or_make_dataset("", tmp_path / "demo2") == Path("mvtec_anomaly_detection")
    for folder in (tmp_path / "mvtec_anomaly_detection").iterdir():
        folder.rename(tmp_path / folder.name)
    with pytest.raises(DatasetError, match="no category folders .* in mvtec_anomaly_detection"):
        demo_data.find_or_make_dataset("", tmp_path / "demo2")
    assert not (tmp_path / "demo2").exists()


def test_notebook_with_a_mistyped_data_root_is_an_error_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_mvtec(tmp_path / "data" / "base", categories=("widget",))
    monkeypatch.setenv("AD_DATA_ROOT", "data/bsae")
    monkeypatch.setenv("AD_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("AD_DEMO_OPTIONS", json.dumps(TINY_DEMO))
    with pytest.raises(DatasetError, match="data/bsae does not exist") as e:
        exec(notebook_cells(0, 1), {})  # the parameters cell, then the data cell, as Run All does
    assert "AD_DATA_ROOT" in str(e.value)
    assert "No dataset found" not in capsys.readouterr().out
    assert not (tmp_path / "demo").exists()  # no demo written, so no demo rows can follow

    monkeypatch.delenv("AD_DATA_ROOT")  # the same through MVTEC_ROOT
    monkeypatch.setenv("MVTEC_ROOT", "data/bsae")
    with pytest.raises(DatasetError, match="data/bsae"):
        exec(notebook_cells(0, 1), {})
    assert not (tmp_path / "demo").exists()

    monkeypatch.setenv("MVTEC_ROOT", "data/base")  # spelt right, it is used
    ns: dict = {}
    exec(notebook_cells(0, 1), ns)
    assert ns["data_root"] == Path("data/base")


def test_demo_only_when_no_root_is_named_and_the_default_is_absent(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AD_DATA_ROOT", raising=False)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    monkeypatch.setenv("AD_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("AD_DEMO_OPTIONS", json.dumps(TINY_DEMO))
    ns: dict = {}
    exec(notebook_cells(0, 1), ns)  # nothing named, no ./mvtec_anomaly_detection: the demo, said once
    assert ns["data_root"] == tmp_path / "demo" and "No dataset found" in capsys.readouterr().out

    # An existing default folder without categories is an error naming it, on both paths.
    (tmp_path / "mvtec_anomaly_detection").mkdir()
    with pytest.raises(DatasetError, match="no category folders .* in mvtec_anomaly_detection"):
        exec(notebook_cells(0, 1), {})
    real = demo_data.make_synthetic_dataset
    monkeypatch.setattr(demo_data, "make_synthetic_dataset",
                        lambda out, seed=0: real(tmp_path / "demo2", seed, **TINY_DEMO))
    args = run_args("x", tmp_path / "r.csv", tmp_path, categories=("weave",), models=("cae",))
    assert main(args[:1] + args[3:]) == 2  # no --data-root
    assert "mvtec_anomaly_detection" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "demo2").exists() and not (tmp_path / "r.csv").exists()


def test_default_root_falls_back_to_the_demo_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    real = pipeline.demo_data.make_synthetic_dataset
    monkeypatch.setattr(pipeline.demo_data, "make_synthetic_dataset", lambda out, seed=0: real(
        out, seed, image_size=32, n_train=6, n_test_good=2, n_per_defect=1, categories=["weave"]))
    args = run_args("x", tmp_path / "r.csv", tmp_path, "--models", "cae")
    args = args[:1] + args[3:]  # no --data-root
    args[args.index("widget")] = "weave"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "No dataset found at ./mvtec_anomaly_detection" in out and "data/demo" in out
    assert (tmp_path / "data" / "demo" / "weave").is_dir()
    assert read_results(tmp_path / "r.csv")["dataset"].tolist() == ["demo"]
