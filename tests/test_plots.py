"""Figures and report tables from small synthetic inputs (no training, seconds)."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

import models
from pipeline import plots, report

CATEGORIES = {"carpet": "texture", "grid": "texture", "bottle": "object", "screw": "object", "widget": "custom"}


def fake_results(categories=CATEGORIES, model_names=models.MODEL_NAMES, seed=0, nan_category=None) -> pd.DataFrame:
    """A results table shaped like the CSV (DESIGN section 6), with random metrics."""
    rng = np.random.default_rng(seed)
    rows = []
    for cat, kind in categories.items():
        for name in model_names:
            f1 = rng.uniform(0.3, 0.9)
            no_mask = cat == nan_category
            rows.append(dict(
                dataset="demo", category=cat, category_type=kind, model=name,
                image_auroc=rng.uniform(0.4, 1.0), pixel_auroc=np.nan if no_mask else rng.uniform(0.5, 1.0),
                aupro=np.nan if no_mask else rng.uniform(0.2, 0.9), f1=f1, precision=0.5, recall=0.5,
                threshold=0.1, threshold_rule="val_max", f1_max=min(1.0, f1 + 0.05), score="l2|sigma4|mean",
                epochs=1, image_size=32, seed=0, train_seconds=1.0, infer_ms_per_image=1.0, params=1000,
                config_hash="h", device="cpu", torch_version=torch.__version__, finished_at="2024-01-01T00:00:00",
            ))
    return pd.DataFrame(rows)


def test_make_all_figures_writes_the_four_figures(tmp_path):
    paths = plots.make_all_figures(fake_results(nan_category="screw"), tmp_path / "results")
    assert [p.name for p in paths] == list(plots.FIGURE_NAMES)
    for p in paths:
        assert p.is_file() and p.stat().st_size > 20_000, p


def test_figures_with_one_category_and_one_model(tmp_path):
    paths = plots.make_all_figures(fake_results({"stripes": "texture"}, ("cae",)), tmp_path)
    assert all(p.stat().st_size > 5_000 for p in paths)


def test_prepare_results_keeps_latest_row_and_labels_datasets():
    df = fake_results({"carpet": "texture"}, ("cae",))
    newer = df.assign(image_auroc=0.123, finished_at="2025-01-01T00:00:00")
    other = df.assign(dataset="mvtec_ad")
    d = plots.prepare_results(pd.concat([newer, df, other]))
    assert len(d) == 2
    assert d.loc[d["dataset"] == "demo", "image_auroc"].item() == 0.123
    assert set(d["label"]) == {"carpet (demo)", "carpet (mvtec_ad)"}


def test_bad_results_table_is_one_clear_error():
    with pytest.raises(models.UserError, match="lacks column"):
        plots.prepare_results(pd.DataFrame({"category": ["a"]}))
    with pytest.raises(models.UserError, match="empty"):
        plots.prepare_results(fake_results().iloc[:0])


def test_results_table_means():
    df = fake_results()
    t = plots.results_table(df, "image_auroc")
    assert list(t.index[-3:]) == ["texture mean", "object mean", "overall mean"]
    assert list(t.columns) == ["CAE", "VAE", "ViT-VAE", "VAE-GRF"]
    cae = df[df["model"] == "cae"].set_index("category")["image_auroc"]
    assert t.loc["texture mean", "CAE"] == pytest.approx(cae[["carpet", "grid"]].mean())
    assert t.loc["overall mean", "CAE"] == pytest.approx(cae.mean())


def test_summary_is_computed_from_the_table():
    df = fake_results({"a": "texture", "b": "object"}, ("cae", "vae"))
    df.loc[df["model"] == "vae", "image_auroc"] = 0.99
    df.loc[df["model"] == "cae", "image_auroc"] = 0.60
    text = report.summary(df)
    assert "| texture | VAE (0.990)" in text and "| object | VAE (0.990)" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| CAE") or line.startswith("| VAE")}
    assert rows == {"CAE": "0", "VAE": "2"}
    assert report.metric_tables(df).shape[1] == 2 * len(report.SUMMARY_METRICS)


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


def _toy_test_split(size=32, channels=3):
    """The attributes of an MVTecAD test split that the gallery reads."""
    g = torch.Generator().manual_seed(0)
    n_good, n_bad = 4, 6
    images = (torch.rand(n_good + n_bad, channels, size, size, generator=g) * 80 + 80).to(torch.uint8)
    masks = torch.zeros(n_good + n_bad, size, size, dtype=torch.uint8)
    kinds = ["good"] * n_good
    for k in range(n_bad):
        y = x = 4 + 3 * k
        masks[n_good + k, y:y + 6, x:x + 6] = 1
        images[n_good + k, :, y:y + 6, x:x + 6] = 255
        kinds.append(("hole", "scratch")[k % 2])
    return types.SimpleNamespace(images=images, masks=masks, labels=torch.tensor([0] * n_good + [1] * n_bad),
                                 defect_types=kinds, image_size=size, in_channels=channels, category="toy")


@pytest.mark.parametrize("channels", [1, 3])
def test_anomaly_gallery(tmp_path, channels):
    torch.manual_seed(0)
    tiny = {"cae": dict(widths=(8, 16), latent_dim=8), "vae_grf": dict(widths=(8, 16), latent_channels=2)}
    trained = {n: models.build_model(n, image_size=32, in_channels=channels, **o) for n, o in tiny.items()}
    out = plots.anomaly_gallery(trained, _toy_test_split(channels=channels), tmp_path / "gallery.png")
    assert out.is_file() and out.stat().st_size > 20_000


def test_pick_examples_spreads_over_defect_types():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    kinds = ["good"] * 3 + ["a", "a", "b", "c"]
    assert plots._pick_examples(labels, kinds, 2, 3) == [0, 2, 3, 5, 6]


def test_grf_figures(tmp_path):
    p = plots.grf_prior_figure(tmp_path / "grf.png", size=16, rhos=(0.5, 1.0))
    assert p.is_file() and p.stat().st_size > 20_000
    vae = models.build_model("vae", image_size=32, widths=(8, 16), latent_dim=8)
    vae_grf = models.build_model("vae_grf", image_size=32, widths=(8, 16), latent_channels=2)
    p = plots.vae_vs_grf_figure(tmp_path / "vae-vae-grf.png", vae=vae, vae_grf=vae_grf)
    assert p.is_file() and p.stat().st_size > 20_000
