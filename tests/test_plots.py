"""Figures and report tables from small synthetic inputs (no training, seconds)."""
from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
import torch

import models
from pipeline import examples, plots, report
from pipeline.checkpoints import checkpoint_path

CATEGORIES = {"carpet": "texture", "grid": "texture", "bottle": "object", "screw": "object", "widget": "custom"}


def fake_results(categories=CATEGORIES, model_names=models.MODEL_NAMES, seed=0, nan_category=None) -> pd.DataFrame:
    """A results table shaped like the CSV (docs/design.md, "The results CSV"), with random metrics."""
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


def fake_seeds(n_seeds=3, categories=CATEGORIES, model_names=models.MODEL_NAMES, **kw) -> pd.DataFrame:
    """``fake_results`` for seeds 0 .. n_seeds - 1 of one config (each seed its own random metrics)."""
    return pd.concat([fake_results(categories, model_names, seed=s, **kw).assign(seed=s, config_hash=f"h{s}")
                      for s in range(n_seeds)], ignore_index=True)


def fake_curves(categories=CATEGORIES, model_names=models.MODEL_NAMES, seeds=(0, 1), epochs=5,
                no_val=()) -> pd.DataFrame:
    """Per-epoch losses in the long format of ``plots.training_curves``; each model on its own scale."""
    rng = np.random.default_rng(0)
    rows = []
    for cat, kind in categories.items():
        for k, name in enumerate(model_names):
            for seed in seeds:
                for epoch in range(1, epochs + 1):
                    train = 10.0 ** (2 * k - 3) / epoch * rng.uniform(0.9, 1.1)
                    rows.append(dict(dataset="demo", category=cat, category_type=kind, model=name, seed=seed,
                                     epoch=epoch, train_loss=train, val_loss=np.nan if cat in no_val else 1.1 * train,
                                     recon=train / 2, config_hash=f"h{seed}"))
    return pd.DataFrame(rows)


def _by_gid(ax, gid: str) -> list:
    """The artists of ``ax`` tagged ``gid`` by plots (bars, lines, error bars, dots, bands)."""
    return [a for a in (*ax.patches, *ax.lines, *ax.collections) if a.get_gid() == gid]


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


def _capture_figures(monkeypatch) -> list:
    """The matplotlib Figures that plots saves from now on (to read their titles and legends)."""
    figures, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out_path, **kw: figures.append(fig) or save(fig, out_path, **kw))
    return figures


def _texts(fig) -> list[str]:
    """Every title, suptitle and legend entry of a figure."""
    out = [fig.get_suptitle()] + [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for ax in fig.axes:
        out.append(ax.get_title())
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_anomaly_gallery_draws_the_arrays_it_is_given(tmp_path, monkeypatch, channels):
    rng = np.random.default_rng(0)
    n, size = 3, 32
    masks = np.zeros((n, size, size), bool)
    masks[1:, 8:14, 8:14] = True
    recons = {m: rng.random((n, channels, size, size), dtype=np.float32) for m in ("vae_grf", "cae")}
    maps = {m: rng.random((n, size, size), dtype=np.float32) for m in recons}
    figures = _capture_figures(monkeypatch)
    out = plots.anomaly_gallery(tmp_path / "gallery.png", images=rng.random((n, channels, size, size)), masks=masks,
                                row_labels=["good", "hole", "scratch"], reconstructions=recons, maps=maps,
                                category="toy")
    assert out == tmp_path / "gallery.png" and out.stat().st_size > 20_000
    (fig,) = figures
    assert len(fig.axes) == n * (2 + 2 * 2) + 2  # the panels and one colour bar per model
    texts = _texts(fig)
    # Models in the order given, each named by its registry label.
    assert texts[1:7] == ["input", "ground truth", "VAE-GRF\nreconstruction", "VAE-GRF\nerror map",
                          "CAE\nreconstruction", "CAE\nerror map"]
    assert fig.get_suptitle().startswith("toy:")
    # One colour scale per model over all rows: 0 to the 99.5th percentile of its maps.
    cae_map = fig.axes[5].images[0]
    assert cae_map.get_clim() == pytest.approx((0, np.quantile(maps["cae"], 0.995)))
    with pytest.raises(AssertionError, match="one mask"):
        plots.anomaly_gallery(tmp_path / "bad.png", images=rng.random((n, channels, size, size)), masks=masks[:2],
                              row_labels=["a"] * n, reconstructions=recons, maps=maps)


def test_gallery_examples_are_each_models_own_maps():
    torch.manual_seed(0)
    tiny = {"cae": dict(widths=(8, 16), latent_dim=8), "vae_grf": dict(widths=(8, 16), latent_channels=2)}
    trained = {n: models.build_model(n, image_size=32, in_channels=3, **o) for n, o in tiny.items()}
    trained["cae"].train()  # each model is left in the mode it was in
    trained["vae_grf"].eval()
    split = _toy_test_split(channels=3)
    ex = examples.gallery_examples(trained, split, n_good=2, n_defect=3)
    idx = examples.pick_examples(np.asarray(split.labels), split.defect_types, 2, 3)
    x = split.images[idx].float() / 255.0
    assert ex.category == "toy" and ex.row_labels == ["good", "good", "hole", "scratch", "hole"]
    assert ex.images.dtype == np.float32 and ex.images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ex.images, x.numpy())
    assert ex.masks.dtype == bool and ex.masks.shape == (5, 32, 32) and ex.masks[2:].any(axis=(1, 2)).all()
    assert list(ex.maps) == list(ex.reconstructions) == ["cae", "vae_grf"]
    for name, m in trained.items():
        assert ex.maps[name].dtype == np.float32 and ex.maps[name].shape == (5, 32, 32)
        assert ex.reconstructions[name].shape == (5, 3, 32, 32)
        np.testing.assert_allclose(ex.maps[name], m.anomaly_map(x).numpy(), rtol=1e-5, atol=1e-7)
    assert trained["cae"].training and not trained["vae_grf"].training
    with pytest.raises(models.ConfigError, match="1-channel"):
        examples.gallery_examples(trained, _toy_test_split(channels=1))
    with pytest.raises(models.ConfigError, match="at least one"):
        examples.gallery_examples({}, split)


def test_pick_examples_spreads_over_defect_types():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    kinds = ["good"] * 3 + ["a", "a", "b", "c"]
    assert examples.pick_examples(labels, kinds, 2, 3) == [0, 2, 3, 5, 6]


def test_grf_prior_samples_and_figure(tmp_path):
    prior = examples.grf_prior_samples(size=16, rhos=(0.5, 1.0))
    assert prior.kernels == examples.GRF_KERNELS and prior.rhos == (0.5, 1.0)
    assert prior.samples.shape == (3, 2, 16, 16) and prior.kernel_values.shape == (3, 2, len(prior.distances))
    assert prior.kernel_values[:, :, 0] == pytest.approx(1.0)  # k(0) = s^2 = 1
    # Same white noise in every panel: each sample is the prior's own draw from that seed.
    again = models.grf.GRFPrior(16, 16, kernel="gaussian", rho=1.0).sample(
        1, 1, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(prior.samples[2, 1], again[0, 0].numpy())
    p = plots.grf_prior_figure(tmp_path / "grf.png", samples=prior.samples, kernels=prior.kernels, rhos=prior.rhos,
                               distances=prior.distances, kernel_values=prior.kernel_values)
    assert p.is_file() and p.stat().st_size > 20_000


def test_latent_examples_and_vae_vs_grf_figure(tmp_path):
    torch.manual_seed(0)
    vae = models.build_model("vae", image_size=32, widths=(8, 16), latent_dim=8)
    vae_grf = models.build_model("vae_grf", image_size=32, widths=(8, 16), latent_channels=2)
    images = torch.rand(3, 3, 32, 32)
    state = torch.get_rng_state()
    ex = examples.latent_examples(vae, vae_grf, images, n_samples=2)
    assert torch.equal(torch.get_rng_state(), state)  # sampling is seeded, the caller's RNG untouched
    assert ex.images.shape == (3, 3, 32, 32)
    assert ex.vae_z.shape == (5, 8) and ex.grf_z.shape == (5, 2, 8, 8)  # 32 px / stride 4
    assert ex.vae_decoded.shape == ex.grf_decoded.shape == (5, 3, 32, 32)
    vae.eval()
    np.testing.assert_allclose(ex.vae_z[:3], vae.encode(images)[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ex.vae_z[3:], examples.latent_examples(vae, vae_grf, images).vae_z[3:])
    p = plots.vae_vs_grf_figure(tmp_path / "vae-vae-grf.png", images=ex.images, vae_z=ex.vae_z,
                                vae_decoded=ex.vae_decoded, grf_z=ex.grf_z, grf_decoded=ex.grf_decoded, note="test")
    assert p.is_file() and p.stat().st_size > 20_000
    # Without models: freshly initialised ones at 64 px on two procedural images.
    fresh = examples.latent_examples(n_samples=1)
    assert fresh.images.shape == (2, 3, 64, 64) and len(fresh.vae_z) == len(fresh.grf_z) == 3


def test_figures_never_build_or_run_models():
    """plots draws arrays: no torch, no registry lookups of networks, no model calls."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(plots))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    forbidden = {"torch", "build_model", "reconstruct", "anomaly_map", "encode", "decode", "sample", "GRFPrior"}
    assert not used & forbidden


def test_labels_and_colours_come_from_the_registry():
    assert [models.model_label(n) for n in models.MODEL_NAMES] == ["CAE", "VAE", "ViT-VAE", "VAE-GRF"]
    assert models.model_label("retired_model") == "retired_model"  # a row of an old CSV

    class Unnamed(models.AnomalyModel):
        pass

    assert Unnamed.label == "Unnamed"
    colors = plots.model_colors(["retired_model", *models.MODEL_NAMES])
    assert len(set(colors.values())) == 5


def test_a_fifth_registered_model_is_picked_up(tmp_path, monkeypatch):
    class Fifth(models.CAE):
        label = "Fifth"

    # Its registry line goes in the middle, so that registry order is told apart from "unknown names last".
    names = (*models.MODEL_NAMES[:2], "fifth", *models.MODEL_NAMES[2:])
    monkeypatch.setattr(models, "MODELS", {n: models.MODELS.get(n, Fifth) for n in names})
    monkeypatch.setattr(models, "MODEL_NAMES", names)
    order = ["CAE", "VAE", "Fifth", "ViT-VAE", "VAE-GRF"]
    df = fake_results({"carpet": "texture", "bottle": "object"}, ("fifth", "cae", "vae", "vit_vae", "vae_grf"))
    assert list(plots.results_table(df).columns) == order  # registry order, not the CSV's
    assert "| Fifth |" in report.summary(df)
    colors = plots.model_colors(names)
    assert list(colors.values()) == sns.color_palette("colorblind", 10)[:5]  # the palette in registry order
    assert len(set(colors.values())) == 5
    figures = _capture_figures(monkeypatch)
    plots.f1_score_comparison(df, tmp_path / "f1.png")
    legend = [t.get_text() for t in figures[-1].legends[0].get_texts()]
    assert [t for t in legend if "oracle" not in t] == order
    (bars,) = [c for c in figures[-1].axes[0].containers if c.get_label() == "Fifth"]
    assert tuple(bars.patches[0].get_facecolor()[:3]) == pytest.approx(colors["fifth"])
    # Built from the registry, it runs through the gallery like the four.
    fifth = models.build_model("fifth", image_size=32, widths=(8, 16), latent_dim=8)
    ex = examples.gallery_examples({"fifth": fifth}, _toy_test_split())
    plots.anomaly_gallery(tmp_path / "gallery.png", images=ex.images, masks=ex.masks, row_labels=ex.row_labels,
                          reconstructions=ex.reconstructions, maps=ex.maps)
    assert "Fifth\nerror map" in _texts(figures[-1])


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
    # a row of version 1 (no train_hash) named its checkpoint by its config_hash
    legacy = {**row, "train_hash": "", "config_hash": "abc123"}
    assert report.find_checkpoint(legacy, tmp_path) == own


def test_grf_figures_without_checkpoints_keep_the_latent_figure(tmp_path, capsys):
    """Rows reused from the CSV on a machine without their checkpoints: the prior figure is
    drawn, the VAE vs VAE-GRF figure of trained models is not replaced by one of untrained models."""
    latent = tmp_path / "vae-vae-grf.png"
    latent.write_bytes(b"figure of trained models")
    paths = report.grf_figures(fake_results(), tmp_path / "no_data", tmp_path, tmp_path / "no_checkpoints")
    assert paths == [tmp_path / "grf.png"] and (tmp_path / "grf.png").stat().st_size > 10_000
    assert latent.read_bytes() == b"figure of trained models"
    assert "vae-vae-grf.png is left as it is" in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# Several seeds, the F1 floor, training curves


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
    agg = plots.aggregate_seeds(_three_seeds_of_known_values())
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
    d = plots.prepare_results(pd.concat([*old_config, *new_config, rerun]))
    assert d["seed"].tolist() == [0, 1] and d["epochs"].tolist() == [20, 20]
    assert d["image_auroc"].tolist() == [0.5, 0.9]
    assert plots.aggregate_seeds(d)["image_auroc"].item() == pytest.approx(0.7)


def test_results_table_is_the_mean_over_seeds_and_can_give_the_sd():
    df = _three_seeds_of_known_values()
    mean = plots.results_table(df, "image_auroc")
    assert mean.loc["carpet", "CAE"] == pytest.approx(0.7) and mean.loc["bottle", "VAE"] == pytest.approx(0.3)
    assert mean.loc["overall mean", "CAE"] == pytest.approx((0.7 + 0.4) / 2)
    assert list(mean.index) == ["carpet", "bottle", "texture mean", "object mean", "overall mean"]
    sd = plots.results_table(df, "image_auroc", stat="sd")
    assert sd.index.equals(mean.index) and list(sd.columns) == ["CAE", "VAE"]
    assert sd.loc["carpet", "CAE"] == pytest.approx(0.1) and np.isnan(sd.loc["bottle", "VAE"])
    # A mean row's sd is the spread over seeds of that seed's mean: CAE's overall means are 0.4, 0.55, 0.7.
    assert sd.loc["overall mean", "CAE"] == pytest.approx(0.15)
    assert "sd over seeds" in sd.columns.name
    with pytest.raises(ValueError, match="stat"):
        plots.results_table(df, "image_auroc", stat="median")


def test_bar_figures_show_each_seed_and_the_sd(tmp_path, monkeypatch):
    df = fake_seeds(3, {"carpet": "texture", "bottle": "object"}, ("cae", "vae_grf"))
    agg = plots.aggregate_seeds(df)
    figures = _capture_figures(monkeypatch)
    plots.f1_score_comparison(df, tmp_path / "f1.png")
    plots.roc_auc_comparison(df, tmp_path / "roc.png")
    (f1_ax,), (image_ax, pixel_ax) = figures[0].axes, figures[1].axes
    for ax, metric in ((f1_ax, "f1"), (image_ax, "image_auroc"), (pixel_ax, "pixel_auroc")):
        for name in ("cae", "vae_grf"):
            rows = agg[agg["model"] == name]
            bars = _by_gid(ax, f"bars:{name}")
            assert [b.get_height() for b in bars] == pytest.approx(rows[metric].tolist())  # the means
            (errorbars,) = _by_gid(ax, f"sd:{name}")
            spans = [y for seg in errorbars.get_segments() for y in (seg[0][1], seg[1][1])]  # (low, high) per bar
            expected = [y for m, s in zip(rows[metric], rows[f"{metric}_sd"]) for y in (m - s, m + s)]
            assert spans == pytest.approx(expected)  # flat: pytest >= 9 refuses nested approx
            (dots,) = _by_gid(ax, f"seeds:{name}")
            seeds = [df.loc[(df["model"] == name) & (df["category"] == cat) & (df["seed"] == seed), metric].item()
                     for cat in ("carpet", "bottle") for seed in range(3)]
            assert dots.get_offsets()[:, 1].tolist() == pytest.approx(seeds)  # one dot per seed
            for bar, xs in zip(bars, dots.get_offsets()[:, 0].reshape(-1, 3)):  # each bar's dots on the bar
                assert bar.get_x() < xs.min() < xs.max() < bar.get_x() + bar.get_width()
    note = "mean of 3 seeds, error bar = sd, dots = seeds"
    assert note in f1_ax.get_title() and note in figures[1].get_suptitle()
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert legend[:2] == ["CAE", "VAE-GRF"] and {"sd over seeds", "one seed"} <= set(legend)
    # One seed: plain bars, no spread and no word of seeds.
    plots.f1_score_comparison(fake_results(), tmp_path / "f1_one_seed.png")
    ax = figures[-1].axes[0]
    assert not any(a.get_gid().startswith(("sd:", "seeds:")) for a in ax.collections if a.get_gid())
    assert "seeds" not in ax.get_title()


def test_f1_floor_is_drawn_when_the_table_has_it(tmp_path, monkeypatch):
    df = fake_seeds(2, {"carpet": "texture", "bottle": "object", "widget": "custom"}, ("cae", "vae"))
    share = {"carpet": 0.6, "bottle": 0.5}  # widget: an older row without a floor
    df["f1_floor"] = df["category"].map(lambda c: 2 * share[c] / (1 + share[c]) if c in share else np.nan)
    figures = _capture_figures(monkeypatch)
    plots.f1_score_comparison(df, tmp_path / "f1.png")
    ax = figures[-1].axes[0]
    (floor,) = _by_gid(ax, "floor")
    segments = floor.get_segments()
    assert [seg[0][1] for seg in segments] == pytest.approx([0.75, 2 / 3])  # carpet, bottle; none for widget
    for (x0, _), (x1, _) in segments:  # across the category's whole bar group
        assert x1 - x0 > 0.8
    assert plots.FLOOR_LABEL in [t.get_text() for t in figures[-1].legends[0].get_texts()]
    assert _by_gid(ax, "oracle:cae")  # the oracle ticks are still there
    plots.f1_score_comparison(df.drop(columns="f1_floor"), tmp_path / "f1_no_floor.png")
    assert not _by_gid(figures[-1].axes[0], "floor")
    assert plots.FLOOR_LABEL not in [t.get_text() for t in figures[-1].legends[0].get_texts()]


def test_training_curves_one_panel_per_category_one_line_per_model(tmp_path, monkeypatch):
    curves = fake_curves(no_val=("widget",))
    figures = _capture_figures(monkeypatch)
    out = plots.training_curves(curves, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.stat().st_size > 20_000
    (fig,) = figures
    assert [ax.get_title() for ax in fig.axes] == ["carpet (texture)", "grid (texture)", "bottle (object)",
                                                  "screw (object)", "widget (custom)"]
    names = list(models.MODEL_NAMES)
    colors = plots.model_colors(names)
    for ax in fig.axes:
        for name in names:
            (train,) = _by_gid(ax, f"{name}:train_loss")
            assert train.get_linestyle() == "-" and train.get_color() == colors[name]
            assert train.get_xdata().tolist() == [1, 2, 3, 4, 5]
            assert train.get_ydata()[0] == pytest.approx(1.0)  # normalised by its epoch-1 train loss
            assert len(_by_gid(ax, f"band:{name}:train_loss")) == 1  # two seeds: min..max band
        val_lines = [line for line in ax.lines if (line.get_gid() or "").endswith(":val_loss")]
        assert len(val_lines) == (0 if ax.get_title().startswith("widget") else len(names))  # NaN val: no line
        assert all(line.get_linestyle() == "--" for line in val_lines)
        assert ax.get_yscale() == "log"
    assert "mean of 2 seeds" in fig.get_suptitle() and "epoch-1 train loss" in fig.get_suptitle()
    assert "loss (each model's own objective)" in fig.get_supylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["CAE", "VAE", "ViT-VAE", "VAE-GRF", "train", "val", "min–max over seeds"]


def test_training_curves_of_one_epoch_and_one_seed(tmp_path, monkeypatch):
    curves = fake_curves({"stripes": "texture"}, ("cae", "vae"), seeds=(0,), epochs=1)
    figures = _capture_figures(monkeypatch)
    plots.training_curves(curves.drop(columns=["category_type", "seed"]), tmp_path / "curves.png")
    (ax,) = figures[-1].axes
    (line,) = _by_gid(ax, "cae:train_loss")
    assert line.get_marker() == "o"  # one point: a marker, not an invisible line
    assert not [a for a in ax.collections if (a.get_gid() or "").startswith("band:")]
    assert "seeds" not in figures[-1].get_suptitle()
    # Without normalising the losses stay on each model's own scale.
    plots.training_curves(curves, tmp_path / "raw.png", normalize=False)
    (ax,) = figures[-1].axes
    assert _by_gid(ax, "vae:train_loss")[0].get_ydata()[0] == pytest.approx(curves.loc[1, "train_loss"])
    with pytest.raises(models.UserError, match="lacks column"):
        plots.training_curves(curves.drop(columns="train_loss"), tmp_path / "bad.png")


def test_curves_read_from_side_files_are_matched_by_train_hash():
    """runs.read_curves keys each curve by its train_hash (it has no config_hash): the curves of
    an older config, still in the CSV, are left out as they are by config_hash (`plots` command)."""
    df = fake_seeds(2, {"carpet": "texture"}, ("cae", "vae"))
    df["train_hash"] = "t" + df["config_hash"]
    curves = fake_curves({"carpet": "texture"}, ("cae", "vae")).drop(columns="config_hash")
    curves["train_hash"] = "th" + curves["seed"].astype(str)
    stale = curves.assign(train_hash="old", train_loss=1e6)
    kept = plots.curves_of_rows(pd.concat([curves, stale], ignore_index=True), df)
    assert len(kept) == len(curves) and kept["train_loss"].max() < 10


def test_make_all_figures_with_and_without_curves(tmp_path, monkeypatch):
    df = fake_seeds(2, {"carpet": "texture", "bottle": "object"}, ("cae", "vae"))
    curves = fake_curves({"carpet": "texture", "bottle": "object"}, ("cae", "vae"))
    stale = curves.assign(config_hash="old", train_loss=1e6)  # curves of a config the rows no longer plot
    figures = _capture_figures(monkeypatch)
    paths = plots.make_all_figures(df, tmp_path, curves=pd.concat([curves, stale]))
    assert [p.name for p in paths] == [*plots.FIGURE_NAMES, plots.CURVES_FIGURE]
    assert all(p.is_file() for p in paths)
    top = max(line.get_ydata().max() for ax in figures[-1].axes for line in ax.lines)
    assert top < 10  # the stale curves were left out
    # Without curves, or with none of the plotted runs: the four figures only.
    assert [p.name for p in plots.make_all_figures(df, tmp_path / "stale", stale)] == list(plots.FIGURE_NAMES)


# Issue 20, item 15: every figure and table survives metrics that are NaN (a category without
# defective test images has every label-based metric NaN, docs/faults.md), with any number of seeds.


def _rows_with_nan_metrics(n_seeds: int, where: str) -> pd.DataFrame:
    """fake_seeds whose metrics are NaN in 'bottle' (a category without defective test images)
    or in every category; the F1 floor is NaN there too, as evaluate writes it."""
    df = fake_seeds(n_seeds, {"carpet": "texture", "bottle": "object", "widget": "custom"}, ("cae", "vae"))
    df["f1_floor"] = 0.5
    rows = df["category"] == "bottle" if where == "one category" else df["category"].notna()
    df.loc[rows, list(plots.AGGREGATED_METRICS)] = np.nan
    return df


@pytest.mark.parametrize(("where", "n_seeds"), [("one category", 2), ("every category", 1), ("every category", 2)])
def test_every_figure_and_table_survives_nan_metrics(tmp_path, monkeypatch, n_seeds, where):
    df = _rows_with_nan_metrics(n_seeds, where)
    curves = fake_curves({"carpet": "texture", "bottle": "object", "widget": "custom"}, ("cae", "vae"),
                         seeds=range(n_seeds), no_val=("carpet", "bottle", "widget"))
    curves.loc[curves["category"] == "bottle", "train_loss"] = np.nan
    save = plots._save  # drawn in full, saved small: the test is about drawing, not pixels
    monkeypatch.setattr(plots, "_save", lambda fig, out_path, **kw: save(fig, out_path, dpi=30))
    figures = _capture_figures(monkeypatch)
    paths = report.figures(df, tmp_path, results_csv=tmp_path / "none.csv")  # plots.make_all_figures, no curves
    assert [p.name for p in paths] == list(plots.FIGURE_NAMES)
    assert plots.training_curves(curves, tmp_path / plots.CURVES_FIGURE).is_file()
    (f1_ax,) = figures[0].axes
    bars = [bar for name in ("cae", "vae") for bar in _by_gid(f1_ax, f"bars:{name}")]
    assert len(bars) == (4 if where == "one category" else 0)  # carpet and widget, two models each
    assert sum(t.get_text() == "n/a" for t in f1_ax.texts) == (2 if where == "one category" else 6)
    if n_seeds > 1 and where == "one category":
        dots = sum(len(d.get_offsets()) for name in ("cae", "vae") for d in _by_gid(f1_ax, f"seeds:{name}"))
        assert dots == 2 * 2 * n_seeds  # no dot where a seed has no value
    table = report.metric_tables(df)
    assert table.loc["bottle"].map(lambda v: v == "n/a" or (isinstance(v, float) and np.isnan(v))).all()
    assert "Best model per category type" in report.summary(df)


# Issue 20, item 11: a model whose job failed on the hardest category must not rank above a
# model that is better on every category both have.


def _one_model_lacks_the_hardest_category() -> pd.DataFrame:
    """CAE beats VAE on carpet and grid; VAE's job on screw (where CAE is weakest) failed: no row."""
    values = {("carpet", "cae"): 0.95, ("grid", "cae"): 0.9, ("screw", "cae"): 0.6,
              ("carpet", "vae"): 0.9, ("grid", "vae"): 0.85}
    df = fake_results({"carpet": "texture", "grid": "texture", "screw": "object"}, ("cae", "vae"))
    df = df[[(c, m) in values for c, m in zip(df["category"], df["model"])]].copy()
    df["image_auroc"] = [values[c, m] for c, m in zip(df["category"], df["model"])]
    return df


def test_means_that_rank_models_cover_the_categories_every_model_has(tmp_path, monkeypatch):
    df = _one_model_lacks_the_hardest_category()
    table = plots.results_table(df, "image_auroc")
    # Over carpet and grid, the categories both have (was: CAE 0.817 over three, VAE 0.875 over two).
    assert table.loc["overall mean", "CAE"] == pytest.approx(0.925)
    assert table.loc["overall mean", "VAE"] == pytest.approx(0.875)
    assert np.isnan(table.loc["object mean", "CAE"])  # no object category that both models have
    note = plots.means_note(table)
    assert "every model has a value" in note and "screw (no value for VAE)" in note
    assert plots.means_note(plots.results_table(fake_results(), "image_auroc")) == ""  # nothing left out
    figures = _capture_figures(monkeypatch)
    plots.roc_auc_heatmap(df, tmp_path / "heatmap.png")
    assert "screw (no value for VAE)" in figures[-1].get_supxlabel()
    plots.metrics_distribution(df, tmp_path / "distribution.png")  # its mean lines (fewer than 4 categories)
    assert "screw (no value for VAE)" in figures[-1].legends[0].get_title().get_text()
    tables = report.metric_tables(df)
    assert tables.loc["overall mean", ("Image AUROC", "CAE")] == pytest.approx(0.925)
    assert "screw (no value for VAE)" in repr(tables) and "screw (no value for VAE)" in tables._repr_html_()
    text = report.summary(df)
    assert "| all | CAE (0.925)" in text and "| texture | CAE (0.925)" in text
    assert "screw (no value for VAE)" in text


def test_gallery_of_a_category_without_defects_or_with_flat_maps(tmp_path):
    """The gallery of a category without defective test images: empty masks (no outline) and,
    for one model, maps that are zero everywhere (its colour scale must still be valid)."""
    rng = np.random.default_rng(0)
    n, size = 2, 16
    recons = {m: rng.random((n, 3, size, size), dtype=np.float32) for m in ("cae", "vae")}
    maps = {"cae": np.zeros((n, size, size), np.float32), "vae": rng.random((n, size, size), dtype=np.float32)}
    out = plots.anomaly_gallery(tmp_path / "gallery.png", images=rng.random((n, 3, size, size)),
                                masks=np.zeros((n, size, size)), row_labels=["good"] * n, reconstructions=recons,
                                maps=maps, category="no_defects")
    assert out.stat().st_size > 5_000
    assert examples.pick_examples(np.zeros(4, int), ["good"] * 4, n_good=2, n_defect=4) == [0, 3]
