"""The results tables (pipeline/tables.py) from small synthetic rows: the rows kept, the means
over seeds, category x model tables with their mean rows, and the footnotes (no drawing)."""
from __future__ import annotations

import ast
import inspect
import json

import numpy as np
import pandas as pd
import pytest

import models
from pipeline import tables
from table_helpers import fake_results, fake_seeds


def test_prepare_results_keeps_latest_row_and_labels_datasets():
    df = fake_results({"carpet": "texture"}, ("cae",))
    newer = df.assign(image_auroc=0.123, finished_at="2025-01-01T00:00:00")
    other = df.assign(dataset="mvtec_ad")
    d = tables.prepare_results(pd.concat([newer, df, other]))
    assert len(d) == 2
    assert d.loc[d["dataset"] == "demo", "image_auroc"].item() == 0.123
    assert set(d["label"]) == {"carpet (demo)", "carpet (mvtec_ad)"}


def test_bad_results_table_is_one_clear_error():
    with pytest.raises(models.UserError, match="lacks column"):
        tables.prepare_results(pd.DataFrame({"category": ["a"]}))
    with pytest.raises(models.UserError, match="empty"):
        tables.prepare_results(fake_results().iloc[:0])


def test_results_table_means():
    df = fake_results()
    t = tables.results_table(df, "image_auroc")
    assert list(t.index[-3:]) == ["texture mean", "object mean", "overall mean"]
    assert list(t.columns) == ["CAE", "VAE", "ViT-VAE", "VAE-GRF"]
    cae = df[df["model"] == "cae"].set_index("category")["image_auroc"]
    assert t.loc["texture mean", "CAE"] == pytest.approx(cae[["carpet", "grid"]].mean())
    assert t.loc["overall mean", "CAE"] == pytest.approx(cae.mean())


def _three_seeds_of_known_values() -> pd.DataFrame:
    """carpet (texture) and bottle (object), CAE and VAE, seeds 0-2, image AUROC known; the
    VAE's seed 1 on carpet has no value and its bottle row only seed 0."""
    df = fake_seeds(3, {"carpet": "texture", "bottle": "object"}, ("cae", "vae"))
    values = {("carpet", "cae"): [0.6, 0.7, 0.8], ("carpet", "vae"): [0.5, np.nan, 0.9],
              ("bottle", "cae"): [0.2, 0.4, 0.6], ("bottle", "vae"): [0.3, 0.3, 0.3]}
    for (cat, name), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            df.loc[(df["category"] == cat) & (df["model"] == name) & (df["seed"] == seed), "image_auroc"] = v
    return df[~((df["category"] == "bottle") & (df["model"] == "vae") & (df["seed"] > 0))]


def test_aggregate_seeds_means_sds_and_nans():
    agg = tables.aggregate_seeds(_three_seeds_of_known_values())
    assert list(zip(agg["category"], agg["model"])) == [("carpet", "cae"), ("carpet", "vae"),
                                                        ("bottle", "cae"), ("bottle", "vae")]  # textures first
    assert {"category_type", "label"} <= set(agg.columns)
    assert agg["n_seeds"].tolist() == [3, 3, 3, 1]
    assert agg["image_auroc"].tolist() == pytest.approx([0.7, 0.7, 0.4, 0.3])
    assert agg["image_auroc_sd"].iloc[:3].tolist() == pytest.approx([0.1, np.std([0.5, 0.9], ddof=1), 0.2])
    assert np.isnan(agg["image_auroc_sd"].iloc[3])  # one seed: no sd
    assert agg["f1_floor"].isna().all() and "f1_floor_sd" in agg.columns  # a CSV without the column


def test_prepare_results_keeps_every_seed_of_the_latest_config():
    def rows(seed, epochs, finished, auroc):
        config = {"model": "cae", "train": {"epochs": epochs, "seed": seed}}
        return fake_results({"carpet": "texture"}, ("cae",)).assign(
            seed=seed, epochs=epochs, finished_at=finished, image_auroc=auroc, config_json=json.dumps(config))

    old_config = [rows(s, 10, f"2024-01-0{s + 1}", 0.1) for s in range(3)]
    new_config = [rows(s, 20, f"2025-01-0{s + 1}", 0.5 + 0.1 * s) for s in range(2)]
    rerun = rows(1, 20, "2025-02-01", 0.9)  # seed 1 of the new config again: the newer row counts
    d = tables.prepare_results(pd.concat([*old_config, *new_config, rerun]))
    assert d["seed"].tolist() == [0, 1] and d["epochs"].tolist() == [20, 20]
    assert d["image_auroc"].tolist() == [0.5, 0.9]
    assert tables.aggregate_seeds(d)["image_auroc"].item() == pytest.approx(0.7)


def test_results_table_is_the_mean_over_seeds_and_can_give_the_sd():
    df = _three_seeds_of_known_values()
    mean = tables.results_table(df, "image_auroc")
    assert mean.loc["carpet", "CAE"] == pytest.approx(0.7) and mean.loc["bottle", "VAE"] == pytest.approx(0.3)
    assert mean.loc["overall mean", "CAE"] == pytest.approx((0.7 + 0.4) / 2)
    assert list(mean.index) == ["carpet", "bottle", "texture mean", "object mean", "overall mean"]
    sd = tables.results_table(df, "image_auroc", stat="sd")
    assert sd.index.equals(mean.index) and list(sd.columns) == ["CAE", "VAE"]
    assert sd.loc["carpet", "CAE"] == pytest.approx(0.1) and np.isnan(sd.loc["bottle", "VAE"])
    # A mean row's sd is the spread over seeds of that seed's mean: CAE's overall means are 0.4, 0.55, 0.7.
    assert sd.loc["overall mean", "CAE"] == pytest.approx(0.15)
    assert "sd over seeds" in sd.columns.name
    with pytest.raises(ValueError, match="stat"):
        tables.results_table(df, "image_auroc", stat="median")


def test_the_left_out_note_names_the_older_configs_and_how_they_differ():
    def rows(epochs, finished, seed=0):
        config = {"model": "cae", "train": {"epochs": epochs, "seed": seed}}
        return fake_results({"carpet": "texture"}, ("cae",)).assign(
            seed=seed, epochs=epochs, finished_at=finished, config_hash=f"e{epochs}s{seed}",
            config_json=json.dumps(config))

    d = tables.prepare_results(pd.concat([rows(10, "2024-01-01"), rows(10, "2024-01-02", seed=1),
                                          rows(20, "2025-01-01")]))
    assert d["epochs"].tolist() == [20]
    assert tables.left_out_note(d) == ("Drawn: the latest config of each (category, model); 2 rows of older configs "
                                       "left out (older -> drawn):\nCAE on carpet (2 rows; drawn: config_hash e20s0): "
                                       "epochs 10 -> 20")
    assert tables.left_out_note(tables.prepare_results(d)) == tables.left_out_note(d)  # kept when prepared again
    assert tables.left_out_note(tables.prepare_results(fake_results())) == ""  # nothing left out


def test_notes_of_several_tables_are_said_once_when_they_agree():
    assert tables.combine_notes({"Image AUROC": "a", "Pixel AUROC": "a"}) == "a"
    assert tables.combine_notes({"Image AUROC": "a", "Pixel AUROC": ""}) == "a"
    assert tables.combine_notes({"Image AUROC": "a", "Pixel AUROC": "b"}) == "Image AUROC: a\nPixel AUROC: b"
    assert tables.combine_notes({}) == ""


def test_tables_draw_nothing():
    """The report's tables need no drawing library: tables imports neither matplotlib nor seaborn nor plots."""
    tree = ast.parse(inspect.getsource(tables))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                 for alias in node.names}
    assert not imported & {"matplotlib", "seaborn", "plots"}
