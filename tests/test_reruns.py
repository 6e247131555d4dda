"""Why jobs that look done run again (pipeline/reruns.py): changed data, rows evaluated under an
older mask rule, rows under another dataset name; each said once, in one line."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

import models
import pipeline.grid
import pipeline.job
from helpers import grid_with_log, make_tiny_mvtec
from pipeline.results import read_results


def test_a_changed_mask_retrains_exactly_its_category_and_says_why(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget", "fabric"))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid_with_log(root, csv, ckpt, categories=None)
    assert len(trainings) == 2
    mask = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    a = np.array(Image.open(mask))
    a[:3, :3] = 255
    Image.fromarray(a).save(mask)
    _, log = grid_with_log(root, csv, ckpt, categories=None)
    assert trainings[2:] == [("widget", "cae", 0)]  # fabric is unchanged: not retrained
    assert ("data of 'widget' changed since the row was written: 1 file differs (1 changed; "
            "first: ground_truth/scratch/000_mask.png); its jobs run again.") in log
    assert len(read_results(csv)) == 3  # the row of the old data is kept, a new one added


def test_a_new_mask_rule_re_evaluates_from_checkpoints_and_says_why(tmp_path, trainings, monkeypatch):
    """Masks are read only for evaluation: rows of an older mask rule get new keys and are
    re-evaluated from their checkpoints, never retrained, with one line saying why."""
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    monkeypatch.setattr(pipeline.job, "MASK_VERSION", 1)
    first, _ = grid_with_log(root, csv, ckpt, models=["cae", "vae_grf"])
    monkeypatch.undo()  # undoes the trainings counter too: count from here on
    calls = []
    monkeypatch.setattr(pipeline.job, "train_model", lambda *a, **k: calls.append(1))
    df, log = grid_with_log(root, csv, ckpt, models=["cae", "vae_grf"])
    assert not calls and df.attrs["evaluated"] == 2 and df.attrs["trained"] == 0
    assert "2 row(s) of these jobs were evaluated with masks read by an older rule" in log
    assert set(df["train_hash"]) == set(first["train_hash"]) and not set(df["config_hash"]) & set(first["config_hash"])
    assert all(json.loads(c)["mask_version"] == models.mvtec.MASK_VERSION for c in df["config_json"])
    _, again = grid_with_log(root, csv, ckpt, models=["cae", "vae_grf"])
    assert "older rule" not in again  # said once: the new rows are the current ones


def test_rows_under_another_dataset_name_are_explained(tmp_path, monkeypatch):
    """An earlier version named a root of MVTec category names 'mvtec_ad' whatever its folder:
    the rerun under the folder's name says why its jobs run again."""
    root = make_tiny_mvtec(tmp_path / "my_parts", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    monkeypatch.setattr(pipeline.grid, "dataset_name", lambda root: "mvtec_ad")  # the earlier naming
    grid_with_log(root, csv, ckpt)
    monkeypatch.undo()
    df, log = grid_with_log(root, csv, ckpt)
    assert (df["dataset"] == "my_parts").all() and df.attrs["trained"] == 1
    assert ("the rows of 'widget' with these files are in the CSV under the dataset name 'mvtec_ad', but this data "
            "root is named 'my_parts'") in log
    _, again = grid_with_log(root, csv, ckpt)
    assert "under the dataset name" not in again
