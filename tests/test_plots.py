"""Figures (pipeline/plots.py) from small synthetic inputs, and the report's tables beside them (no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from PIL import Image

import models
from pipeline import examples, plots, report, tables
from table_helpers import CATEGORIES, fake_results, fake_seeds, toy_test_split


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
    assert list(tables.results_table(df).columns) == order  # registry order, not the CSV's
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
    ex = examples.gallery_examples({"fifth": fifth}, toy_test_split())
    plots.anomaly_gallery(tmp_path / "gallery.png", images=ex.images, masks=ex.masks, row_labels=ex.row_labels,
                          reconstructions=ex.reconstructions, maps=ex.maps)
    assert "Fifth\nerror map" in _texts(figures[-1])


# --------------------------------------------------------------------------------------
# Several seeds, the F1 floor, training curves


def test_bar_figures_show_each_seed_and_the_sd(tmp_path, monkeypatch):
    df = fake_seeds(3, {"carpet": "texture", "bottle": "object"}, ("cae", "vae_grf"))
    agg = tables.aggregate_seeds(df)
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


# Every figure and table survives metrics that are NaN (a category without defective test
# images has every label-based metric NaN, docs/faults.md), with any number of seeds.


def _rows_with_nan_metrics(n_seeds: int, where: str) -> pd.DataFrame:
    """fake_seeds whose metrics are NaN in 'bottle' (a category without defective test images)
    or in every category; the F1 floor is NaN there too, as evaluate writes it."""
    df = fake_seeds(n_seeds, {"carpet": "texture", "bottle": "object", "widget": "custom"}, ("cae", "vae"))
    df["f1_floor"] = 0.5
    rows = df["category"] == "bottle" if where == "one category" else df["category"].notna()
    df.loc[rows, list(tables.AGGREGATED_METRICS)] = np.nan
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


# A model whose job failed on the hardest category must not rank above a model that is
# better on every category both have.


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
    table = tables.results_table(df, "image_auroc")
    # Over carpet and grid, the categories both have (was: CAE 0.817 over three, VAE 0.875 over two).
    assert table.loc["overall mean", "CAE"] == pytest.approx(0.925)
    assert table.loc["overall mean", "VAE"] == pytest.approx(0.875)
    assert np.isnan(table.loc["object mean", "CAE"])  # no object category that both models have
    note = tables.means_note(table)
    assert "every model has a value" in note and "screw (no value for VAE)" in note
    assert tables.means_note(tables.results_table(fake_results(), "image_auroc")) == ""  # nothing left out
    figures = _capture_figures(monkeypatch)
    plots.roc_auc_heatmap(df, tmp_path / "heatmap.png")
    assert "screw (no value for VAE)" in figures[-1].get_supxlabel()
    plots.metrics_distribution(df, tmp_path / "distribution.png")  # its mean lines (fewer than 4 categories)
    assert "screw (no value for VAE)" in figures[-1].legends[0].get_title().get_text()
    shown = report.metric_tables(df)
    assert shown.loc["overall mean", ("Image AUROC", "CAE")] == pytest.approx(0.925)
    assert "screw (no value for VAE)" in repr(shown) and "screw (no value for VAE)" in shown._repr_html_()
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


def test_gallery_panels_follow_the_images_aspect(tmp_path):
    n, h, w = 2, 16, 40
    rng = np.random.default_rng(0)
    arrays = dict(images=rng.random((n, 3, h, w)), masks=rng.random((n, h, w)) > 0.9, row_labels=["good", "cut"],
                  reconstructions={"cae": rng.random((n, 3, h, w))}, maps={"cae": rng.random((n, h, w))})
    wide = Image.open(plots.anomaly_gallery(tmp_path / "wide.png", **arrays))
    crop = {"images": arrays["images"][..., :h], "masks": arrays["masks"][..., :h],  # the same, h x h
            "reconstructions": {"cae": arrays["reconstructions"]["cae"][..., :h]},
            "maps": {"cae": arrays["maps"]["cae"][..., :h]}}
    square = Image.open(plots.anomaly_gallery(tmp_path / "square.png", **{**arrays, **crop}))
    assert wide.width / wide.height > 1.5 * square.width / square.height
