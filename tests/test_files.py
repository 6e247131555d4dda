"""pipeline.files: the all-or-nothing write under the results CSV and the checkpoints, and the plain names
of the files and folders built from data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import make_tiny_mvtec, one_error_line, run_args, tree
from models.mvtec import dataset_name
from pipeline import runs
from pipeline.__main__ import main
from pipeline.checkpoints import checkpoint_path
from pipeline.files import atomic_write, current_umask, is_plain_name, plain_name
from pipeline.results import read_results


def test_atomic_write_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with atomic_write(path, "w") as f:
        f.write("a,b\r\n1,2\n")  # text mode without newline translation: CSV line ends kept as written
    assert path.read_bytes() == b"a,b\r\n1,2\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    with atomic_write(path, "w", permissions=0o640) as f:
        f.write("x")
    assert path.stat().st_mode & 0o777 == 0o640 and os.listdir(tmp_path) == ["table.csv"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(error), atomic_write(path, "wb") as f:
        f.write(b"half of the new")
        raise error("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]


# ------------------------------------------------------------------ plain names (issue 20, item 3)

HOSTILE = ["..", ".", "", ".hidden", "...", "a/b", "/etc/passwd", "../../x", "a\\b", "nul\x00l", "x" * 300,
           "é" * 300, os.fsdecode(b"caf\xe9"), "a/../../../b", "\n"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_every_path_built_from_data_names_stays_one_plain_name_inside_its_folder(tmp_path, name):
    made = [
        checkpoint_path(tmp_path, dataset=name, category=name, model=name, train_hash=name),
        runs.scores_path(tmp_path, dataset=name, category=name, model=name, config_hash=name),
        runs.curves_path(tmp_path, dataset=name, category=name, model=name, train_hash=name),
        runs.manifest_path(tmp_path, dataset=name, category=name, fingerprint=name),
    ]
    for path in made:
        parts = path.relative_to(tmp_path).parts
        assert len(parts) == 3, parts  # <dataset>/<category>/<file>, each one plain name
        assert is_plain_name(parts[0]) and is_plain_name(parts[1]), parts
        assert not parts[2].startswith(".") and not set("/\\\0") & set(parts[2]) and len(parts[2].encode()) <= 255
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        assert tmp_path.resolve() in path.resolve().parents


def test_plain_names_keep_ordinary_names_and_keep_changed_ones_apart():
    for name in ("demo", "hexnut", "missing_piece", "vae_grf", "bottle.v2", "wïdget", "-rf"):
        assert plain_name(name) == name and is_plain_name(name)
    assert plain_name("wïdget 1") == "wïdget_1"  # as before: the folders of existing runs are found again
    changed = ["..", ".", "", ".hidden", "hidden", "x" * 300, "x" * 299 + "y"]
    assert len({plain_name(n) for n in changed}) == len(changed)
    assert not any(is_plain_name(n) for n in ("..", "a/b", "nul\x00l", "", ".x", 3))


def test_the_committed_rows_find_their_side_files_by_these_names():
    """The committed demo's side files keep their paths (the names are ordinary)."""
    repo = Path(__file__).resolve().parents[1]
    rows = read_results(repo / "evaluation_results_all_models.csv")
    folder = runs.runs_dir(repo / "evaluation_results_all_models.csv")
    for row in rows.to_dict("records"):
        where = dict(dataset=row["dataset"], category=row["category"], model=row["model"])
        assert runs.scores_path(folder, **where, config_hash=row["config_hash"]).is_file()
        assert runs.curves_path(folder, **where, train_hash=row["train_hash"]).is_file()


def test_a_dataset_marker_named_dotdot_is_refused_and_nothing_is_written_outside(tmp_path, capsys):
    data = make_tiny_mvtec(tmp_path / "work" / "data", categories=("widget",), n_train=4, n_test_good=1,
                           n_per_defect=1)
    work = tmp_path / "work"
    for name in ("..", "../..", "a/../../b", ".", "a\\b"):
        (data / "DATASET.json").write_text(json.dumps({"name": name}))
        before = tree(tmp_path)
        assert main(run_args(data, work / "out" / "r.csv", work / "out", models=("cae",))) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "DATASET.json" in line and repr(name) in line and "plain name" in line, line
        assert tree(tmp_path) == before
    (data / "DATASET.json").write_text(json.dumps({"name": ""}))  # no name: the folder's, as without a marker
    assert dataset_name(data) == "data"
