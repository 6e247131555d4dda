"""A user's files and folders that are careless or unusual but legitimate (issue 13): names
pandas reads as missing, a results CSV that is a symbolic link, a mistyped data root, a demo
folder holding the user's own files, a cache path that is a file, a damaged checkpoint; and
hostile or odd ones (issue 20): a crafted demo marker, dataset names that are paths, a
checkpoint that inflates, folder names that are not UTF-8.

Each test reproduces the case as a user meets it: real files in tmp_path, the command line
run in-process (`main([...])`: exit status, stderr), or the functions the notebook's cells
call. The rows of docs/faults.md name these tests.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import models
import pipeline.__main__
from helpers import make_tiny_mvtec
from models.errors import CheckpointError, ConfigError, DatasetError
from models.mvtec import dataset_name
from pipeline import checkpoints, demo_data, grid, plots, report, runs
from pipeline.__main__ import main
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.results import TEXT_COLUMNS, ResultsError, read_results
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "evaluate_all_models.ipynb"
TINY_SET = ["--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16",
            "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16"]
TINY = {"cae": {"widths": (8, 16), "latent_dim": 16}}
TRAIN = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1, device="cpu")
TINY_DEMO = dict(image_size=32, n_train=4, n_test_good=1, n_per_defect=1, categories=["weave"])


pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_mvtec(tmp_path_factory.mktemp("file_faults_data"), categories=("widget",))


def run_args(root, csv, tmp, *extra, categories=("widget",), models=("cae",)):
    return ["run", "--data-root", str(root), "--categories", *categories, "--models", *models, "--image-size", "32",
            "--epochs", "1", "--batch-size", "4", "--results-csv", str(csv), "--checkpoint-dir", str(tmp / "ck"),
            "--no-progress", "--num-threads", "1", "--device", "cpu", *TINY_SET, *extra]


def one_error_line(err: str) -> str:
    """stderr of a refused command: exactly one line, 'error: ...', no traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def notebook_cells(*indices: int) -> str:
    """The source of the notebook's code cells at ``indices`` (0 = the parameters cell)."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    return "\n".join("".join(code[i]["source"]) for i in indices)


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# ------------------------------------------------------------------ item 5: names pandas reads as missing


@pytest.mark.parametrize("root_name, category", [("None", "NA"), ("nan", "null")])
def test_root_and_category_named_like_missing_values_are_names(tmp_path, capsys, root_name, category):
    data = make_tiny_mvtec(tmp_path / root_name, categories=(category,))
    csv = tmp_path / "r.csv"
    assert main(run_args(data, csv, tmp_path, categories=(category,))) == 0
    out = capsys.readouterr().out
    assert "(no results)" not in out
    assert f"{category} " in out.splitlines()[-1]  # the printed table has the row

    df = read_results(csv)
    assert df["category"].tolist() == [category] and df["dataset"].tolist() == [root_name]
    for c in TEXT_COLUMNS:  # text columns are text: a string, or NaN for an empty cell only
        assert all(isinstance(v, str) for v in df[c].dropna()), c
    assert df["category"].notna().all() and df["dataset"].notna().all()
    assert pd.api.types.is_float_dtype(df["image_auroc"])  # numbers stay numbers
    assert plots.prepare_results(df)["label"].tolist() == [category]  # figures label it by its name

    # The notebook's path: run_grid's table (the next cells' input) has the row, under its name.
    run = grid.run_grid(data, [category], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                        results_csv=csv, checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    assert run["category"].tolist() == [category] and run.attrs["skipped"] == 1
    assert category in report.metric_tables(run).index


# ------------------------------------------------------------------ item 6: a results CSV that is a link


def test_results_csv_that_is_a_symlink_is_written_where_it_points(root, tmp_path, capsys, monkeypatch):
    shared = tmp_path / "shared_drive"
    shared.mkdir()
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.csv"
    link.symlink_to("shared_drive/results.csv")  # relative, and the shared file does not exist yet

    assert main(run_args(root, link, tmp_path)) == 0
    assert link.is_symlink() and os.readlink(link) == "shared_drive/results.csv"
    assert len(read_results(shared / "results.csv")) == 1
    assert (shared / ".results.csv.lock").exists() and not (tmp_path / ".link.csv.lock").exists()
    assert (shared / "results.runs").is_dir() and not (tmp_path / "link.runs").exists()

    # A second run through the link appends to the shared file (and still keeps the link).
    assert main(run_args(root, link, tmp_path, models=("cae", "vae"))) == 0
    assert link.is_symlink()
    assert sorted(read_results(shared / "results.csv")["model"]) == ["cae", "vae"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "link.csv", "shared_drive"]

    # Readers given the link find the side files beside the real file (training curves, scores).
    df = read_results(link)
    assert runs.runs_dir(link) == shared / "results.runs"
    assert sorted(runs.read_curves(df, link)["model"].unique()) == ["cae", "vae"]
    assert report.verdicts(df, link, n_boot=50)[1] == []  # no row lacks its per-image scores


def test_side_file_folder_taken_by_a_file_is_refused_before_training(root, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    (tmp_path / "r.runs").write_text("my notes")
    assert main(run_args(root, csv, tmp_path)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "r.runs" in line and "side files" in line and "--results-csv" in line
    assert (tmp_path / "r.runs").read_text() == "my notes" and not csv.exists() and not (tmp_path / "ck").exists()
    with pytest.raises(ResultsError, match="side files"):  # the notebook's path: one sentence, not FileExistsError
        grid.run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                      results_csv=csv, checkpoint_dir=tmp_path / "ck", log=lambda m: None)


def test_results_csv_under_home_tilde_goes_home(root, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    # The notebook's AD_RESULTS_CSV=~/results.csv: no shell expands the ~ there.
    run = grid.run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                        results_csv="~/results.csv", checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    assert len(run) == 1 and len(read_results(home / "results.csv")) == 1
    assert (home / "results.runs").is_dir() and list(work.iterdir()) == []  # no folder named "~"
    assert len(read_results("~/results.csv")) == 1


# ------------------------------------------------------------------ item 7: a mistyped data root


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
    monkeypatch.setattr(pipeline.__main__, "make_synthetic_dataset",
                        lambda out, seed=0: real(tmp_path / "demo2", seed, **TINY_DEMO))
    args = run_args("x", tmp_path / "r.csv", tmp_path, categories=("weave",))
    assert main(args[:1] + args[3:]) == 2  # no --data-root
    assert "mvtec_anomaly_detection" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "demo2").exists() and not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------ item 8: the demo folder holds the user's files


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
    monkeypatch.setattr(pipeline.__main__, "make_synthetic_dataset",
                        lambda out, seed=0: real(out, seed, **TINY_DEMO))
    args = run_args("x", tmp_path / "r.csv", tmp_path, categories=("weave",))
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


# ------------------------------------------------------------------ item 10: --cache-dir that is not a folder


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_cache_dir_that_cannot_be_a_folder_exits_2_before_training(root, tmp_path, capsys, where):
    (tmp_path / "notes.txt").write_text("not a folder")
    cache = tmp_path / "notes.txt" if where == "a file" else tmp_path / "notes.txt" / "cache"
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--cache-dir", str(cache), models=("cae", "vae"))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(cache) in line and "--cache-dir" in line
    assert not csv.exists() and not list((tmp_path / "ck").rglob("*.pt"))  # nothing trained
    with pytest.raises(ConfigError, match="cache folder"):  # the same from Python
        grid.run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                      results_csv=csv, checkpoint_dir=tmp_path / "ck", cache_dir=cache, log=lambda m: None)


def test_cache_dir_that_is_a_link_to_a_folder_is_used(root, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "store", target_is_directory=True)
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, "--cache-dir", str(tmp_path / "cache"))) == 0
    assert (tmp_path / "cache").is_symlink() and list((tmp_path / "store").glob("*.pt"))


# ------------------------------------------------------------------ item 16: a damaged checkpoint


def test_truncated_checkpoint_is_skipped_by_the_figures_with_a_note(root, tmp_path, capsys):
    csv, ck = tmp_path / "r.csv", tmp_path / "ck"
    assert main(run_args(root, csv, tmp_path, models=("cae", "vae"))) == 0
    rows = read_results(csv)
    vae_pt = report.find_checkpoint(rows[rows["model"] == "vae"].iloc[0], ck)
    vae_pt.write_bytes(vae_pt.read_bytes()[: vae_pt.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(vae_pt, model="vae")
    message = str(e.value)
    assert "damaged" in message and "--force" in message and "written by this package" not in message

    # The notebook's cells after training: the gallery of the other model, the GRF figures.
    paths = report.galleries(rows, root, tmp_path / "results", ck)
    assert [p.name for p in paths] == ["gallery_widget.png"] and paths[0].is_file()
    note = capsys.readouterr().out
    assert "vae on 'widget' is left out of the figures" in note and "damaged" in note
    paths = report.grf_figures(rows, root, tmp_path / "images", ck)
    assert [p.name for p in paths] == ["grf.png"]
    assert "damaged" in capsys.readouterr().out

    # What the message says works: --force retrains that job, and its checkpoint loads again.
    assert main(run_args(root, csv, tmp_path, "--force", models=("vae",))) == 0
    assert load_checkpoint(vae_pt, model="vae") is not None


# ------------------------------------------------------------------ issue 20, item 2: names read from a demo marker


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


def test_ctrl_c_while_writing_the_demo_leaves_no_temp_folder(tmp_path, monkeypatch):
    def interrupted(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo_data, "_make_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_data.make_synthetic_dataset(tmp_path / "demo", **TINY_DEMO)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ issue 20, item 3: paths built from data names


def test_a_dataset_marker_named_dotdot_is_refused_and_nothing_is_written_outside(tmp_path, capsys):
    data = make_tiny_mvtec(tmp_path / "work" / "data", categories=("widget",), n_train=4, n_test_good=1,
                           n_per_defect=1)
    work = tmp_path / "work"
    for name in ("..", "../..", "a/../../b", ".", "a\\b"):
        (data / "DATASET.json").write_text(json.dumps({"name": name}))
        before = tree(tmp_path)
        assert main(run_args(data, work / "out" / "r.csv", work / "out")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "DATASET.json" in line and repr(name) in line and "plain name" in line, line
        assert tree(tmp_path) == before
    (data / "DATASET.json").write_text(json.dumps({"name": ""}))  # no name: the folder's, as without a marker
    assert dataset_name(data) == "data"


# ------------------------------------------------------------------ issue 20, item 4: a checkpoint that inflates


def inflating_checkpoint(tmp_path: Path, *, stored: bool) -> tuple[Path, object]:
    """A checkpoint of a tiny CAE whose first weight record is replaced by zeros (16 MiB deflated,
    a small file that inflates; or 4 MiB stored, far beyond the model)."""
    model = models.build_model("cae", image_size=32, **TINY["cae"])
    good = save_checkpoint(tmp_path / "good.pt", model, name="cae")
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as out:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                with out.open(record, "w", force_zip64=True) as f:
                    for _ in range(4 if stored else 16):
                        f.write(bytes(1 << 20))
            else:
                out.writestr(info, src.read(info))
    return crafted, model.config


@pytest.mark.parametrize("stored", [False, True], ids=["deflated", "stored"])
def test_a_checkpoint_that_declares_far_more_than_its_model_is_refused_before_unpacking(tmp_path, monkeypatch,
                                                                                       stored):
    crafted, config = inflating_checkpoint(tmp_path, stored=stored)
    loads = []
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(crafted, model="cae", config=config)
    message = str(e.value)
    assert str(crafted) in message and "MiB" in message and "--force" in message, message
    assert not loads  # refused from the zip's directory alone: nothing was unpacked
    if not stored:  # a record that inflates is refused even when the caller expects no config
        with pytest.raises(CheckpointError, match="uncompressed"):
            load_checkpoint(crafted, model="cae")
        assert not loads


# ------------------------------------------------------------------ issue 20, item 9: the dataset's name


def test_the_dataset_name_does_not_depend_on_which_categories_are_present(tmp_path):
    tiny = dict(n_train=1, n_test_good=1, defects=())
    mine = make_tiny_mvtec(tmp_path / "my_parts", categories=("screw", "bottle"), **tiny)
    assert dataset_name(mine) == "my_parts"  # MVTec AD's category names, but the user's own data
    make_tiny_mvtec(mine, categories=("widget",), **tiny)
    assert dataset_name(mine) == "my_parts"  # a new category renames nothing: no job retrains for it
    for folder in ("mvtec_anomaly_detection", "MVTec-AD"):  # MVTec AD as its archive or README names it
        mv = make_tiny_mvtec(tmp_path / folder, categories=("screw",), **tiny)
        assert dataset_name(mv) == "mvtec_ad"
        make_tiny_mvtec(mv, categories=("widget",), **tiny)
        assert dataset_name(mv) == "mvtec_ad"
    (mine / "DATASET.json").write_text(json.dumps({"name": "parts v2"}))  # a name of one's own
    assert dataset_name(mine) == "parts v2"
    assert dataset_name(demo_data.make_synthetic_dataset(tmp_path / "d", **TINY_DEMO)) == "demo"


# ------------------------------------------------------------------ issue 20, item 16: names that are not UTF-8


@pytest.mark.parametrize("where", ["category", "data root"])
def test_a_folder_name_that_is_not_utf8_is_refused_before_training(tmp_path, capsys, where):
    latin1 = os.fsdecode(b"caf\xe9")  # as a zip made on Windows unpacks: a surrogate escape in Python
    if where == "category":
        data = make_tiny_mvtec(tmp_path / "data", categories=("widget", latin1), n_train=4, n_test_good=1,
                               n_per_defect=1)
        cats = ("widget", latin1)
    else:
        data = make_tiny_mvtec(tmp_path / latin1, categories=("widget",), n_train=4, n_test_good=1, n_per_defect=1)
        cats = ("widget",)
    csv = tmp_path / "r.csv"
    assert main(run_args(data, csv, tmp_path, categories=cats)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "caf\\xe9" in line and "UTF-8" in line and "rename" in line, line
    assert not csv.exists() and not list(tmp_path.rglob("*.pt"))  # nothing trained
