"""The notebook's helpers (pipeline/report.py) on small synthetic rows: parameters from the
environment, the summary computed from the table, the checkpoints behind the figures."""
from __future__ import annotations

import warnings

import pytest

import models
from helpers import TINY, TRAIN, make_tiny_mvtec, run_grid, wide_root
from pipeline import report
from pipeline.checkpoints import checkpoint_path
from pipeline.results import read_results
from table_helpers import fake_results


def test_summary_is_computed_from_the_table():
    df = fake_results({"a": "texture", "b": "object"}, ("cae", "vae"))
    df.loc[df["model"] == "vae", "image_auroc"] = 0.99
    df.loc[df["model"] == "cae", "image_auroc"] = 0.60
    text = report.summary(df)
    assert "| texture | VAE (0.990)" in text and "| object | VAE (0.990)" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| CAE") or line.startswith("| VAE")}
    assert rows == {"CAE": "0", "VAE": "2"}
    assert report.metric_tables(df).shape[1] == 2 * len(report.SUMMARY_METRICS) + 1  # + the F1 floor


def test_env_parameters(monkeypatch):
    monkeypatch.setenv("AD_TEST_INT", "3")
    monkeypatch.setenv("AD_TEST_LIST", "cae, vae")
    monkeypatch.setenv("AD_TEST_DICT", '{"cae": {"latent_dim": 8}}')
    assert report.env("AD_TEST_INT", 30) == 3
    assert report.env("AD_TEST_LIST", None) == ["cae", "vae"]
    assert report.env("AD_TEST_DICT", {}) == {"cae": {"latent_dim": 8}}
    assert report.env("AD_TEST_UNSET", "x") == "x"
    monkeypatch.setenv("AD_TEST_INT", "three")
    with pytest.raises(models.ConfigError, match="AD_TEST_INT"):
        report.env("AD_TEST_INT", 30)


def test_find_checkpoint_is_the_jobs_own_path(tmp_path):
    """The checkpoint of a row is at checkpoints.checkpoint_path of its own dataset and category
    (names made file-system safe), never a same-named file of another dataset."""
    row = {"dataset": "my data", "category": "widget ä/1", "model": "cae", "train_hash": "abc123"}
    assert report.find_checkpoint({**row, "config_hash": "def456"}, tmp_path) is None
    other = checkpoint_path(tmp_path, **{**row, "dataset": "other"})
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    assert report.find_checkpoint(row, tmp_path) is None  # same model and hash, another dataset
    own = checkpoint_path(tmp_path, **row)
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert report.find_checkpoint(row, tmp_path) == own and own.parent.name == "widget_ä_1"
    # a row without a train_hash names no checkpoint, whatever its config_hash
    assert report.find_checkpoint({**row, "train_hash": "", "config_hash": "abc123"}, tmp_path) is None
    assert report.find_checkpoint({**row, "train_hash": float("nan"), "config_hash": "abc123"}, tmp_path) is None


def test_grf_figures_without_checkpoints_keep_the_latent_figure(tmp_path, capsys):
    """Rows reused from the CSV on a machine without their checkpoints: the prior figure is
    drawn, the VAE vs VAE-GRF figure of trained models is not replaced by one of untrained models."""
    latent = tmp_path / "vae-vae-grf.png"
    latent.write_bytes(b"figure of trained models")
    paths = report.grf_figures(fake_results(), tmp_path / "no_data", tmp_path, tmp_path / "no_checkpoints")
    assert paths == [tmp_path / "grf.png"] and (tmp_path / "grf.png").stat().st_size > 10_000
    assert latent.read_bytes() == b"figure of trained models"
    assert "vae-vae-grf.png is left as it is" in capsys.readouterr().out


def test_without_per_image_scores_the_summary_says_no_interval_can_be_computed():
    text = report.summary(fake_results({"a": "texture", "b": "object"}, ("cae", "vae")))  # no CSV: no side files
    assert "no pair of models has per-image scores of the same categories and seeds (side files deleted)" in text
    assert "Left out (no per-image scores): every row (no results CSV given)." in text


def test_dataset_table_shows_sizes_and_survives_odd_categories(tmp_path):
    """The notebook's first table: images, median size and aspect per category; a category
    with an unreadable file or no images shows '?' / 0 rather than stopping the notebook."""
    root = wide_root(tmp_path)
    make_tiny_mvtec(root, categories=("broken",), size=32)
    (root / "broken" / "test" / "hole" / "000.png").write_bytes(b"not an image")
    (root / "empty" / "train" / "good").mkdir(parents=True)
    table = report.describe_dataset(root).set_index("category")
    assert table.loc["strip", "median size (w x h)"] == "80x32" and table.loc["strip", "aspect (w:h)"] == "2.5:1"
    assert table.loc["tile", "aspect (w:h)"] == "1:1" and table.loc["tile", "images"] == 14
    assert table.loc["broken", "images"] == "?" and table.loc["empty", "images"] == 0


def test_figures_of_a_category_whose_models_differ_in_size(tmp_path, capsys):
    """Rows of two runs at other sizes (CAE kept-aspect, VAE square): the gallery shows the
    models that share the first one's input and names the other, instead of stopping."""
    root = wide_root(tmp_path)
    kw = dict(train=TRAIN, model_overrides=TINY, results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck",
              log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the square run's squash warning
        run_grid(root, ["strip"], ["cae"], image_size=32, aspect="keep", **kw)
        run_grid(root, ["strip"], ["vae"], image_size=32, **kw)
    rows = read_results(tmp_path / "r.csv")
    paths = report.galleries(rows, root, tmp_path / "figs", tmp_path / "ck", n_good=1, n_defect=1)
    assert [p.name for p in paths] == ["gallery_strip.png"]
    assert "vae left out of its figures: trained at another input size than 32x80 px" in capsys.readouterr().out
