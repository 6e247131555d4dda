"""Figures: the model comparison from the results CSV, anomaly-map galleries, GRF figures.

Everything here draws on ``matplotlib.figure.Figure`` objects with the Agg canvas, never on
pyplot's global state: nothing is switched at import time, nothing leaks between calls,
and the same code runs headless (CLI, tests) and in a notebook (which shows the PNGs).

The comparison figures read only the results table (docs/design.md, "The results CSV"), as
``tables`` prepares it; the entry point for the command line is ``make_all_figures(df, out_dir)``.
A table may hold several seeds of a run: every figure shows one value per (category, model), the
mean over seeds (``tables.aggregate_seeds``), and the bar figures show the seeds' spread too. The
training curves (``training_curves``) draw per-epoch losses given as a table. The galleries and
the GRF figures draw arrays they are given (``examples`` runs the models and samples the
prior): nothing here builds, runs or samples a model. Models are named, ordered and
coloured by the registry (``models.MODEL_NAMES``, each class's ``label``): each keeps one
colour in every figure (``model_colors``). Categories are ordered textures, then objects,
then custom categories, and the split is marked where it helps reading.
"""
from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

import models
from models import model_label
from models.errors import DatasetError

from . import tables

SHORT_LABELS = {"image_auroc": "AUROC", "pixel_auroc": "AUROC", "aupro": "AU-PRO", "f1": "F1", "f1_max": "F1"}
# The four figures drawn from the results table alone; CURVES_FIGURE needs the per-epoch losses.
FIGURE_NAMES = ("f1_score_comparison.png", "roc_auc_comparison.png", "roc_auc_heatmap.png", "metrics_distribution.png")
CURVES_FIGURE = "training_curves.png"
FLOOR_LABEL = "F1 of calling every image defective"
AUROC_METRICS = ("image_auroc", "pixel_auroc")  # the two panels of the ROC AUC figures
CURVE_COLUMNS = ("dataset", "category", "model", "epoch", "train_loss")
CATEGORY_MARKERS = {"texture": "o", "object": "^", "custom": "s"}  # metrics_distribution's points
DPI = 130
GALLERY_DPI = 100  # galleries are mostly photographs: 100 dpi keeps them ~1 MB and still sharp


# --------------------------------------------------------------------------------------
# Shared helpers


@functools.cache
def _seaborn():
    """seaborn, imported on first use, not with this module: it costs about 1 s more than
    matplotlib (it loads scipy.stats, and IPython through ipywidgets), and this module is also
    imported where nothing is drawn (``python -m pipeline run``, the report)."""
    import seaborn

    return seaborn


def model_colors(names) -> dict[str, tuple]:
    """Model name -> RGB, stable across figures: the registry's models take the palette's
    colours in registry order (``models.MODEL_NAMES``), other names (rows of a model no
    longer registered) the following ones, in sorted order."""
    known = list(models.MODEL_NAMES)
    extra = sorted(n for n in set(names) if n not in known)
    palette = _seaborn().color_palette("colorblind", max(10, len(known) + len(extra)))
    colors = {name: palette[i] for i, name in enumerate(known + extra)}
    return {n: colors[n] for n in names}


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (constrained layout keeps labels apart)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path, dpi: int = DPI) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi, facecolor="white")
    return out_path


def _style():
    """Seaborn look applied only while a figure is drawn (a context, not a global switch)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_seaborn().axes_style("whitegrid"))
    stack.enter_context(_seaborn().plotting_context("notebook", font_scale=0.9))
    return stack


def _footnote(fig, d: pd.DataFrame, extra: str = "") -> None:
    """The left-out note (``left_out_note``) and ``extra`` (e.g. ``means_note``) under the figure, if any."""
    note = "\n".join(n for n in (tables.left_out_note(d), extra) if n)
    if note:
        fig.supxlabel(note, x=0.01, ha="left", fontsize=7.5, color="0.3", gid="left-out-note")


def _mark_type_groups(ax, cats: list[tuple[str, str]], *, axis: str = "x", label_y: float | None = None):
    """Dashed separators between category types, and the type name over each group."""
    types = [t for _, t in cats]
    starts = [i for i in range(len(types)) if i == 0 or types[i] != types[i - 1]]
    if len(starts) < 2 and types and types[0] == "custom":
        return
    bounds = starts + [len(types)]
    for s, e in zip(bounds[:-1], bounds[1:]):
        if s > 0:
            if axis == "x":
                ax.axvline(s - 0.5, color="0.35", ls="--", lw=1)
            else:
                ax.axhline(s, color="white", lw=3)
        if axis == "x" and label_y is not None:
            ax.text((s + e - 1) / 2, label_y, f"{types[s]}s" if types[s] != "custom" else "custom",
                    ha="center", va="center", fontsize=9, color="0.25", style="italic")


# --------------------------------------------------------------------------------------
# Comparison figures (results table -> PNG)


def _seed_offsets(n: int, width: float) -> np.ndarray:
    """x offsets of n seed dots within one bar: spread over its middle, so that equal values stay apart
    (none for a bar whose seeds have no value: a category without defective test images)."""
    return np.zeros(n) if n <= 1 else np.linspace(-0.3, 0.3, n) * width


def _grouped_bars(ax, agg, per_seed, metric, cats, names, colors, *, oracle: str | None = None,
                  floor: str | None = None):
    """Bars of ``metric`` per category (x) and model (hue); NaN cells are marked 'n/a'.

    ``agg``: one row per (category, model) (``aggregate_seeds``), the bar is its mean; with
    several seeds an error bar (sd) and one dot per seed (rows of ``per_seed``) are drawn on
    it. ``oracle``: a column drawn as a black tick over each bar; ``floor``: a column drawn as
    a dashed line across each category's group (the score of a trivial rule, not skill).
    Every mark is tagged (``gid``) so tests can read back what was drawn.
    """
    n = len(names)
    width = 0.8 / n
    x = np.arange(len(cats))
    index = {lab: i for i, (lab, _) in enumerate(cats)}
    several_seeds = agg["n_seeds"].max() > 1
    for j, m in enumerate(names):
        rows = agg[agg["model"] == m]
        xs = np.array([index[lab] for lab in rows["label"]]) - 0.4 + width * (j + 0.5)
        ys = rows[metric].to_numpy(dtype=float)
        ok = np.isfinite(ys)
        ax.bar(xs[ok], ys[ok], width=width * 0.92, color=colors[m], label=model_label(m), gid=f"bars:{m}")
        for xi in xs[~ok]:
            ax.text(xi, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
        for xi in xs[ok & (ys == 0)]:  # a zero has no bar: say so, so it is not read as missing
            ax.text(xi, 0.02, "0", ha="center", va="bottom", fontsize=7, color=colors[m])
        if several_seeds:
            sd = rows[f"{metric}_sd"].to_numpy(dtype=float)
            has_sd = ok & np.isfinite(sd)
            errorbars = ax.errorbar(xs[has_sd], ys[has_sd], yerr=sd[has_sd], fmt="none", ecolor="0.15",
                                    elinewidth=1.0, capsize=2.5, zorder=3, label="sd over seeds" if j == 0 else None)
            errorbars.lines[2][0].set_gid(f"sd:{m}")  # the vertical segments, one per bar
            dots_x, dots_y = [], []
            for xi, lab in zip(xs, rows["label"]):
                seeds = per_seed.loc[(per_seed["model"] == m) & (per_seed["label"] == lab), metric]
                values = pd.to_numeric(seeds, errors="coerce").dropna().to_numpy(dtype=float)
                dots_x.extend(xi + _seed_offsets(len(values), width))
                dots_y.extend(values)
            ax.scatter(dots_x, dots_y, s=10, color="0.1", edgecolors="white", linewidths=0.5, zorder=4,
                       gid=f"seeds:{m}", label="one seed" if j == 0 else None)
        if oracle is not None:
            yo = rows[oracle].to_numpy(dtype=float)
            ok = np.isfinite(yo)
            ax.scatter(xs[ok], yo[ok], marker="_", s=(width * 300) ** 2 / 40, color="black", lw=1.5, zorder=3,
                       label="F1 max (oracle)" if j == 0 else None, gid=f"oracle:{m}")
    if floor is not None:
        floors = agg.groupby("label", sort=False)[floor].mean().reindex([lab for lab, _ in cats])
        ok = np.isfinite(floors.to_numpy(dtype=float))
        if ok.any():
            ax.hlines(floors[ok], x[ok] - 0.44, x[ok] + 0.44, colors="black", linestyles=(0, (4, 2)), lw=1.4,
                      zorder=3.5, label=FLOOR_LABEL, gid="floor")
    ax.set_xticks(x, [lab for lab, _ in cats], rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(cats) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(tables.METRIC_LABELS.get(metric, metric))
    ax.grid(axis="x", visible=False)
    _mark_type_groups(ax, cats, label_y=1.06)


def _bar_legend(fig, ax, names) -> None:
    """The figure's legend: the models first (registry order), then the marks (oracle, floor, sd, seeds)."""
    handles, entries = ax.get_legend_handles_labels()
    models_first = sorted(zip(handles, entries), key=lambda he: he[1] not in {model_label(m) for m in names})
    fig.legend(*zip(*models_first), loc="outside right center", frameon=False)


def _bar_width(n_cats: int, n_models: int) -> float:
    return float(np.clip(2.5 + 0.22 * n_cats * max(n_models, 2), 7.0, 22.0))


def _bars_note(agg: pd.DataFrame, metrics) -> str:
    """How to read the bars of ``metrics``, for a title: '' with one seed."""
    seeds = tables.averaged_seeds_note(agg, metrics)
    return f"\nbars: {seeds}, error bar = sd, dots = seeds" if seeds else ""


def _bar_inputs(df: pd.DataFrame):
    """What a grouped-bar figure draws from: the rows (one per seed), their seed means, the
    categories, the models and their colours."""
    d = tables.prepare_results(df)
    names = tables.ordered_models(d)
    return d, tables.aggregate_seeds(d), tables.ordered_categories(d), names, model_colors(names)


def f1_score_comparison(df: pd.DataFrame, out_path) -> Path:
    """Grouped bars of F1 at the honest threshold (from val normals) per category x model,
    with the oracle F1 max as a black tick over each bar for reference, and, when the table
    has ``f1_floor``, the F1 of calling every test image defective as a dashed line across
    each category: an F1 at that line is no skill, whatever the threshold."""
    d, agg, cats, names, colors = _bar_inputs(df)
    with _style():
        fig = _new_figure(_bar_width(len(cats), len(names)), 4.6)
        ax = fig.add_subplot()
        oracle = "f1_max" if "f1_max" in d.columns else None
        _grouped_bars(ax, agg, d, "f1", cats, names, colors, oracle=oracle, floor="f1_floor")
        ax.set_xlabel("category")
        ax.set_title(f"F1 per category and model ({tables.dataset_note(d)}){_bars_note(agg, ['f1'])}")
        _bar_legend(fig, ax, names)
        _footnote(fig, d)
    return _save(fig, out_path)


def roc_auc_comparison(df: pd.DataFrame, out_path) -> Path:
    """Grouped bars of image AUROC (top) and pixel AUROC (bottom) per category x model."""
    d, agg, cats, names, colors = _bar_inputs(df)
    with _style():
        fig = _new_figure(_bar_width(len(cats), len(names)), 8.0)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
            _grouped_bars(ax, agg, d, metric, cats, names, colors)
            ax.axhline(0.5, color="0.3", lw=1, ls=":")
            ax.set_title(f"{tables.METRIC_LABELS[metric]} (dotted line: chance)", fontsize=10)
        axes[0].tick_params(labelbottom=False)
        axes[1].set_xlabel("category")
        fig.suptitle(f"ROC AUC per category and model ({tables.dataset_note(d)}){_bars_note(agg, AUROC_METRICS)}")
        _bar_legend(fig, axes[0], names)
        _footnote(fig, d)
    return _save(fig, out_path)


def roc_auc_heatmap(df: pd.DataFrame, out_path) -> Path:
    """Annotated heatmaps (category x model) of image AUROC and pixel AUROC, with mean rows;
    each cell the mean over seeds.

    Colour scale fixed to [0, 1] and centred on 0.5 (chance): red is worse than chance,
    yellow is chance, green is good, whatever the data range.
    """
    d = tables.prepare_results(df)
    cats = tables.ordered_categories(d)
    seeds = tables.averaged_seeds_note(tables.aggregate_seeds(d, metrics=AUROC_METRICS), AUROC_METRICS)
    notes = {}
    with _style():
        n_rows = len(cats) + 3
        n_models = len(tables.ordered_models(d))
        fig = _new_figure(max(7.0, 2.0 + 2.6 * n_models), max(3.5, 1.2 + 0.34 * n_rows))
        axes = fig.subplots(1, 2, sharey=True)
        for k, (ax, metric) in enumerate(zip(axes, ("image_auroc", "pixel_auroc"))):
            table = tables.results_table(d, metric)
            notes[tables.METRIC_LABELS[metric]] = tables.means_note(table)
            _seaborn().heatmap(table, ax=ax, annot=True, fmt=".2f", vmin=0, vmax=1, center=0.5, cmap="RdYlGn",
                        linewidths=0.5, linecolor="white", cbar=k == 1, annot_kws={"fontsize": 8},
                        cbar_kws={"label": "AUROC (0.5 = chance)", "shrink": 0.8})
            ax.grid(False)
            ax.set_facecolor("0.93")  # NaN cells (metric not computable) stay light grey
            for (i, j) in zip(*np.nonzero(table.isna().to_numpy())):
                ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.45")
            ax.axhline(len(cats), color="black", lw=1.5)  # categories above, means below
            _mark_type_groups(ax, cats, axis="y")
            ax.set_title(tables.METRIC_LABELS[metric])
            ax.set_xlabel("model")
            ax.set_ylabel("category" if k == 0 else "")
            ax.tick_params(axis="x", rotation=0)
            ax.tick_params(axis="y", rotation=0)
        seeds = f"; {seeds}" if seeds else ""
        fig.suptitle(f"ROC AUC per category and model ({tables.dataset_note(d)}{seeds})")
        _footnote(fig, d, tables.combine_notes(notes))
    return _save(fig, out_path)


def metrics_distribution(df: pd.DataFrame, out_path) -> Path:
    """Per model, the distribution over categories of image AUROC, pixel AUROC, AU-PRO and F1:
    a box per model and one marker per category (circle: texture, triangle: object); each
    category's value is its mean over seeds."""
    rows = tables.prepare_results(df)
    d = tables.aggregate_seeds(rows)
    metrics = ("image_auroc", "pixel_auroc", "aupro", "f1")
    seeds = tables.averaged_seeds_note(d, metrics)
    names = tables.ordered_models(d)
    colors = model_colors(names)
    labels = [model_label(m) for m in names]
    rng = np.random.default_rng(0)  # jitter only; fixed so the PNG is reproducible
    notes = {}  # the mean lines' footnotes
    with _style():
        fig = _new_figure(max(8.0, 3.0 + 1.6 * len(names)), 7.5)
        axes = fig.subplots(2, 2).ravel()
        for ax, metric in zip(axes, metrics):
            sub = d[["model", "category_type", metric]].dropna()
            if sub.empty:
                ax.text(0.5, 0.5, "not computable\n(no ground-truth masks)", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                ax.set_xticks(range(len(labels)), labels)
            elif sub.groupby("model").size().max() >= 4:
                _seaborn().boxplot(data=sub.assign(name=sub["model"].map(model_label)), x="name", y=metric, hue="name",
                            order=labels, hue_order=labels, palette=[colors[m] for m in names], ax=ax,
                            showfliers=False, width=0.55, legend=False, boxprops={"alpha": 0.55})
            else:  # a box of 1-3 points would suggest a spread that is not there: show the mean instead
                notes[tables.METRIC_LABELS[metric]] = _mean_lines(ax, d, sub, metric, names, colors, rng)
            if metric != "f1" and metric != "aupro":
                ax.axhline(0.5, color="0.3", lw=1, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(tables.METRIC_LABELS[metric], fontsize=10)
            ax.set_xlabel("model")
            ax.set_ylabel(SHORT_LABELS[metric])
        _distribution_legend(fig, axes, rows, tables.combine_notes(notes))
        per_category = f"; each category: {seeds}" if seeds else ""
        fig.suptitle(f"Metrics across categories, per model ({tables.dataset_note(d)}{per_category})")
    return _save(fig, out_path)


def _mean_lines(ax, d: pd.DataFrame, sub: pd.DataFrame, metric: str, names, colors, rng) -> str:
    """A line at each model's mean of ``metric`` over the categories every model has (``d``: one row per
    category and model) and a jittered marker per category (``sub``: the rows with a value); the
    footnote naming the categories the means leave out."""
    labels = [model_label(m) for m in names]
    table = tables.category_table(d, metric, names, tables.ordered_categories(d))
    means = table[tables.comparable(table).to_numpy()].mean()  # over the same categories for every model
    for i, m in enumerate(names):
        mean = means[m]
        ax.hlines(mean, i - 0.28, i + 0.28, color=colors[m], lw=3, label="mean" if i == 0 else None)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    for t, marker in CATEGORY_MARKERS.items():
        pts = sub[sub["category_type"] == t]
        if pts.empty:
            continue
        xs = pts["model"].map({m: i for i, m in enumerate(names)}).to_numpy(dtype=float)
        ax.scatter(xs + rng.uniform(-0.15, 0.15, len(xs)), pts[metric], marker=marker, s=22,
                   color="0.15", alpha=0.8, zorder=3, label=t)
    return tables.missing_values_note(table, "Mean lines")


def _distribution_legend(fig, axes, rows: pd.DataFrame, means_notes: str) -> None:
    """One legend for the panels (mean lines, category markers) with the footnotes as its title,
    or the footnotes alone under the figure when no panel has a legend entry."""
    handles, entries = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in entries:
                handles.append(h)
                entries.append(n)
    note = "\n".join(n for n in (tables.left_out_note(rows), means_notes) if n)
    if handles:  # the footnote goes above the legend's entries: a figure label there would overlap them
        legend = fig.legend(handles, [n if n == "mean" else f"{n} category" for n in entries],
                            loc="outside lower center", ncols=len(entries), frameon=False, title=note or None,
                            title_fontsize=7.5, alignment="left")
        legend.get_title().set(color="0.3", gid="left-out-note")
    else:
        _footnote(fig, rows, means_notes)


def make_all_figures(df: pd.DataFrame, out_dir, curves: pd.DataFrame | None = None) -> list[Path]:
    """The four comparison figures of docs/design.md, "Figures" (``FIGURE_NAMES``), written to
    ``out_dir``, and ``training_curves.png`` (``CURVES_FIGURE``) when ``curves`` has rows of
    the plotted runs; their paths."""
    out_dir = Path(out_dir)
    d = tables.prepare_results(df)
    makers = (f1_score_comparison, roc_auc_comparison, roc_auc_heatmap, metrics_distribution)
    paths = [make(d, out_dir / name) for make, name in zip(makers, FIGURE_NAMES)]
    curves = None if curves is None else curves_of_rows(curves, d)
    if curves is not None and len(curves):
        paths.append(training_curves(curves, out_dir / CURVES_FIGURE))
    return paths


# --------------------------------------------------------------------------------------
# Training curves (per-epoch losses -> PNG)


def curves_of_rows(curves: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The curves of the runs that the figures plot: the curves whose (dataset, category, model,
    hash) is a row of ``prepare_results(rows)``, so an older config's curves are not averaged
    in. The hash is ``train_hash`` (what ``runs.read_curves`` gives), else ``config_hash``;
    without one both tables have, ``curves`` as given."""
    key = next((k for k in ("train_hash", "config_hash") if k in curves.columns and k in rows.columns), None)
    if key is None or len(curves) == 0:
        return curves
    keys = ["dataset", "category", "model", key]
    plotted = tables.prepare_results(rows)[keys].astype(str).drop_duplicates()
    return curves[pd.MultiIndex.from_frame(curves[keys].astype(str)).isin(pd.MultiIndex.from_frame(plotted))]


def _prepare_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Long per-epoch losses with ``label``, in display order; optional columns filled in."""
    if curves is None or len(curves) == 0:
        raise DatasetError("the training-curves table is empty; it needs one row per (run, epoch).")
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise DatasetError(f"the training-curves table lacks column(s) {', '.join(missing)}; "
                           f"it needs {', '.join(CURVE_COLUMNS)} (and optionally seed, val_loss, category_type).")
    c = curves.copy()
    c["category"] = c["category"].astype(str)
    for column, default in (("category_type", "custom"), ("seed", 0), ("val_loss", np.nan)):
        if column not in c.columns:
            c[column] = default
    c["category_type"] = c["category_type"].fillna("custom").astype(str)
    for column in ("epoch", "train_loss", "val_loss"):
        c[column] = pd.to_numeric(c[column], errors="coerce")
    return tables.in_display_order(c, then=["seed", "epoch"])


def _first_epoch_scale(c: pd.DataFrame) -> pd.Series | None:
    """(label, model) -> its first epoch's train loss, mean over seeds; None if one is not > 0
    (a loss that can be negative cannot be read as a ratio)."""
    first = c[c["epoch"] == c.groupby(["label", "model"])["epoch"].transform("min")]
    scale = first.groupby(["label", "model"])["train_loss"].mean()
    return scale if bool((scale > 0).all()) else None


def training_curves(curves: pd.DataFrame, out_path, *, normalize: bool = True) -> Path:
    """Train (solid) and val (dashed) loss per epoch: one panel per category (textures first),
    one colour per model. With several seeds the line is the mean over seeds and a light band
    spans their min..max.

    ``curves``: long format, one row per (dataset, category, model, seed, epoch) with
    ``train_loss`` and ``val_loss`` (NaN where a category had no val images; its dashed line
    is then left out). The models minimise different objectives (a VAE's includes its KL, a
    CAE's is a pixel MSE), orders of magnitude apart, so with ``normalize`` (and every loss
    positive) each model's losses are divided by its first-epoch train loss in that category:
    every curve starts near 1 and the panels compare how far and how fast each model fits.
    The y axis is logarithmic when every plotted value is positive. Lines and bands carry a
    ``gid`` "<model>:train_loss" / "<model>:val_loss" (bands: "band:...") for tests.
    """
    c = _prepare_curves(curves)
    cats, names = tables.ordered_categories(c), tables.ordered_models(c)
    colors = model_colors(names)
    scale = _first_epoch_scale(c) if normalize else None
    seed_counts = _curve_seed_counts(c)
    several_seeds = bool(seed_counts["n_seeds"].max() > 1)
    y_label = "loss (each model's own objective)" + ("\n÷ its epoch-1 train loss" if scale is not None else "")
    n_cols = min(4, len(cats))
    n_rows = math.ceil(len(cats) / n_cols)
    with _style():
        fig = _new_figure(3.3 * n_cols + 1.9, 2.7 * n_rows + 1.1)
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
        for ax in axes[len(cats):]:
            fig.delaxes(ax)
        for k, (ax, (label, category_type)) in enumerate(zip(axes, cats)):
            _curve_panel(ax, c[c["label"] == label], label, names, colors, scale, bands=several_seeds)
            ax.set_title(f"{label} ({category_type})", fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch" if k >= len(cats) - n_cols else "")
        fig.supylabel(y_label, fontsize=10)
        handles = [Line2D([], [], color=colors[m], lw=2, label=model_label(m)) for m in names]
        handles += [Line2D([], [], color="0.2", ls="-", label="train"),
                    Line2D([], [], color="0.2", ls="--", label="val")]
        if several_seeds:
            handles.append(Patch(color="0.2", alpha=0.15, label="min–max over seeds"))
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        how = f"; line = {tables.averaged_seeds_note(seed_counts)}" if several_seeds else ""
        units = ("each model's own objective, divided by its epoch-1 train loss" if scale is not None
                 else "each model's own objective")
        fig.suptitle(f"Training curves per category ({tables.dataset_note(c)}{how})\nloss: {units}", fontsize=11)
    return _save(fig, out_path)


def _curve_panel(ax, panel: pd.DataFrame, label: str, names, colors, scale, *, bands: bool) -> None:
    """One category's panel: per model its train (solid) and val (dashed) loss per epoch, the mean
    over seeds divided by ``scale[(label, model)]`` (None: as they are), with a min..max band over
    seeds when ``bands``; a log y axis when every plotted value is positive."""
    plotted = []
    for m in names:
        model_curves = panel[panel["model"] == m]
        ref = 1.0 if scale is None or model_curves.empty else float(scale[(label, m)])
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            by_epoch = model_curves.groupby("epoch")[column].agg(["mean", "min", "max"]).dropna() / ref
            if by_epoch.empty:
                continue
            epochs = by_epoch.index.to_numpy(dtype=float)
            ax.plot(epochs, by_epoch["mean"], ls=style, color=colors[m], lw=1.6, gid=f"{m}:{column}",
                    marker="o" if len(epochs) == 1 else None, ms=4)
            if bands:
                ax.fill_between(epochs, by_epoch["min"], by_epoch["max"], color=colors[m], alpha=0.15,
                                lw=0, gid=f"band:{m}:{column}")
            plotted.append(by_epoch.to_numpy())
    if plotted and (np.concatenate(plotted) > 0).all():
        _log_y(ax)


def _log_y(ax) -> None:
    """A log y axis with plain numbers (0.5, 1, 100), not powers of ten: normalised losses
    span less than a decade, where 6×10⁻¹ reads worse than 0.6; within a decade the minor
    ticks 2, 3, 4, 5 and 7 (x 10^k) are labelled too."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    if high / low < 10:
        labelled = (2, 3, 4, 5, 7)
        some_minor = FuncFormatter(lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in labelled
                                   else "")
        ax.yaxis.set_minor_formatter(some_minor)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _curve_seed_counts(c: pd.DataFrame) -> pd.DataFrame:
    """Seeds per (category, model) of a curves table, as ``n_seeds`` (for ``_seeds_note``)."""
    return c.groupby(["label", "model"])["seed"].nunique().rename("n_seeds").to_frame()


# --------------------------------------------------------------------------------------
# Anomaly-map gallery (arrays from examples.gallery_examples -> PNG)


def _as_rgb(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) float array in [0, 1] -> array for imshow and its colormap."""
    a = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    return (a[0], "gray") if a.shape[0] == 1 else (a.transpose(1, 2, 0), None)


def anomaly_gallery(out_path, *, images: np.ndarray, masks: np.ndarray, row_labels: list[str],
                    reconstructions: dict[str, np.ndarray], maps: dict[str, np.ndarray], category: str = "") -> Path:
    """Test images of one category: input, ground truth, then each model's reconstruction
    and anomaly map (``examples.gallery_examples`` computes them).

    ``images`` (N, C, H, W) in [0, 1]; ``masks`` (N, H, W); ``row_labels`` one per image
    ("good" or its defect type); ``reconstructions`` / ``maps``: model name -> (N, C, H, W)
    / (N, H, W), drawn in that order; panels have the images' aspect. Each model's maps share
    one colour scale over all rows (0 to the 99.5th percentile), so a good and a defective
    image can be compared; maps are never normalised per image. The ground-truth outline is drawn on every map.
    """
    names = list(maps)
    masks = np.asarray(masks) > 0
    n_rows, n_cols = len(images), 2 + 2 * len(names)
    assert names and list(reconstructions) == names, "one reconstruction and one map per model, same order"
    assert len(masks) == len(row_labels) == n_rows, "one mask and one row label per image"
    assert all(len(maps[n]) == len(reconstructions[n]) == n_rows for n in names), "one map per image and model"
    colors = model_colors(names)
    # Panels of the images' aspect (width / height) and about the area of a 1.45-inch square.
    aspect = min(max(images.shape[-1] / images.shape[-2], 1 / 3), 3)
    cell_w, cell_h = 1.45 * aspect**0.5, 1.45 / aspect**0.5
    fig = _new_figure(cell_w * n_cols + 0.6, cell_h * n_rows + 1.3)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    heads = ["input", "ground truth"]
    heads += [f"{model_label(n)}\n{w}" for n in names for w in ("reconstruction", "error map")]
    for j, h in enumerate(heads):
        axes[0, j].set_title(h, fontsize=9, color=colors[names[(j - 2) // 2]] if j >= 2 else "black")
    for r in range(n_rows):
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
        img, cmap = _as_rgb(images[r])
        axes[r, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[r, 1].imshow(masks[r], cmap="gray", vmin=0, vmax=1)
    for k, n in enumerate(names):
        vmax = float(np.quantile(maps[n], 0.995)) or 1.0
        for r in range(n_rows):
            img, cmap = _as_rgb(reconstructions[n][r])
            axes[r, 2 + 2 * k].imshow(img, cmap=cmap, vmin=0, vmax=1)
            im = axes[r, 3 + 2 * k].imshow(maps[n][r], cmap="inferno", vmin=0, vmax=vmax)
            if masks[r].any():
                axes[r, 3 + 2 * k].contour(masks[r], levels=[0.5], colors="#00d0ff", linewidths=1.0)
        cb = fig.colorbar(im, ax=axes[:, 3 + 2 * k], location="bottom", shrink=0.9, aspect=12, pad=0.02)
        cb.set_ticks([0, vmax], labels=["0", f"{vmax:.2g}"])
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(f"{category}: test images, reconstructions and anomaly maps (cyan: ground-truth outline)", fontsize=10)
    return _save(fig, out_path, dpi=GALLERY_DPI)


# --------------------------------------------------------------------------------------
# GRF figures (for the README, images/; arrays from examples.grf_prior_samples / latent_examples)

KERNEL_LABELS = {"exponential": "exponential", "matern32": "Matérn-3/2", "gaussian": "Gaussian"}


def grf_prior_figure(out_path, *, samples: np.ndarray, kernels, rhos, distances: np.ndarray,
                     kernel_values: np.ndarray) -> Path:
    """Samples of the GRF prior (``examples.grf_prior_samples``) on a torus.

    ``samples`` (kernels, rhos, h, w): rows are kernels, columns correlation lengths rho
    (latent px), then a last column with each kernel k(d) (``kernel_values`` (kernels, rhos,
    M) at ``distances`` (M,)). Drawn from the same white noise, the panels differ only by the
    covariance: larger rho = larger blobs, the Gaussian kernel is smoother than Matern-3/2,
    which is smoother than the exponential.
    """
    kernels, rhos = list(kernels), list(rhos)
    samples = np.asarray(samples)
    assert samples.shape[:2] == (len(kernels), len(rhos)), f"samples {samples.shape} are not (kernels, rhos, h, w)"
    colors = _seaborn().color_palette("viridis", len(rhos))
    fig = _new_figure(2.3 * (len(rhos) + 1) + 0.8, 2.3 * len(kernels) + 0.6)
    axes = fig.subplots(len(kernels), len(rhos) + 1, squeeze=False)
    for r, kernel in enumerate(kernels):
        for c, rho in enumerate(rhos):
            ax = axes[r, c]
            im = ax.imshow(samples[r, c], cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"ρ = {rho:g} latent px", fontsize=10)
            if c == 0:
                ax.set_ylabel(KERNEL_LABELS.get(kernel, kernel), fontsize=10)
        ax = axes[r, -1]
        for c, (rho, color) in enumerate(zip(rhos, colors)):
            ax.plot(distances, kernel_values[r, c], color=color, label=f"ρ = {rho:g}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("k(d) / s²", fontsize=9)
        ax.tick_params(labelsize=8)
        if r == 0:
            ax.set_title("kernel", fontsize=10)
            ax.legend(fontsize=8, frameon=False)
        if r == len(kernels) - 1:
            ax.set_xlabel("torus distance d (latent px)", fontsize=9)
    fig.colorbar(im, ax=axes[:, :-1], location="left", shrink=0.6, pad=0.05, label="z (prior variance s² = 1)")
    h, w = samples.shape[-2:]
    fig.suptitle(f"Samples of the GRF prior on a {h}×{w} torus (same white noise in every panel)", fontsize=11)
    return _save(fig, out_path)


def vae_vs_grf_figure(out_path, *, images: np.ndarray, vae_z: np.ndarray, vae_decoded: np.ndarray,
                      grf_z: np.ndarray, grf_decoded: np.ndarray, note: str = "") -> Path:
    """The VAE's latent VECTOR against the VAE-GRF's latent MAP, for the same images, and
    samples of each prior decoded by each model (``examples.latent_examples``).

    ``images`` (N, C, S, S) in [0, 1]. ``vae_z`` (N + n, D), ``grf_z`` (N + n, C_z, h, w)
    and their decodings (N + n, C, S, S): the first N rows are the images' posterior means,
    the n rows after are draws of each prior (VAE: N(0, I); VAE-GRF: the GRF). Columns:
    input | VAE z (bars over the D latent dims) | VAE decoded | two channels of the VAE-GRF
    map z (the two that vary most over the images) | VAE-GRF decoded.
    """
    n_img, n_rows = len(images), len(vae_z)
    assert 0 < n_img <= n_rows and len(grf_z) == len(vae_decoded) == len(grf_decoded) == n_rows, (
        "vae_z, grf_z and the decodings need one row per image, then one per prior sample")
    active = np.argsort(-grf_z[:n_img].var(axis=(0, 2, 3)))[:2]  # the two channels that vary most
    fig = _new_figure(13.0, 2.0 * n_rows + 1.0)
    axes = fig.subplots(n_rows, 6, squeeze=False, gridspec_kw={"width_ratios": [1, 2.2, 1, 1, 1, 1]})
    colors = model_colors(["vae", "vae_grf"])
    vae, grf = model_label("vae"), model_label("vae_grf")
    heads = ["input", f"{vae}: latent vector z\n(D = {vae_z.shape[1]})", f"{vae} decoded",
             f"{grf}: latent map z\nchannel {active[0]} ({grf_z.shape[2]}×{grf_z.shape[3]})",
             f"{grf}: latent map z\nchannel {active[-1]}", f"{grf} decoded"]
    head_colors = ["black", colors["vae"], colors["vae"], colors["vae_grf"], colors["vae_grf"], colors["vae_grf"]]
    vlim = float(max(np.abs(vae_z).max(), 1e-6))
    mlim = float(max(np.abs(grf_z[:, active]).max(), 1e-6))
    for r in range(n_rows):
        enc = r < n_img
        for c, ax in enumerate(axes[r]):
            if c != 1:
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9, color=head_colors[c])
        if enc:
            img, cmap = _as_rgb(images[r])
            axes[r, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
            axes[r, 0].set_ylabel(f"image {r + 1}\n(posterior mean)", fontsize=9)
        else:
            axes[r, 0].axis("off")
            axes[r, 0].text(0.5, 0.5, f"prior\nsample {r - n_img + 1}", ha="center", va="center", fontsize=10,
                            transform=axes[r, 0].transAxes)
        vec = vae_z[r]
        axes[r, 1].bar(np.arange(len(vec)), vec, width=1.0, color=colors["vae"])
        axes[r, 1].set_ylim(-vlim * 1.05, vlim * 1.05)
        axes[r, 1].set_xlim(-0.5, len(vec) - 0.5)
        axes[r, 1].tick_params(labelsize=7)
        axes[r, 1].set_ylabel("z_j", fontsize=8)
        if r == n_rows - 1:
            axes[r, 1].set_xlabel("latent dimension j", fontsize=8)
        for k, ax in ((0, axes[r, 3]), (1, axes[r, 4])):  # a one-channel map shows its channel twice
            im = ax.imshow(grf_z[r, active[min(k, len(active) - 1)]], cmap="RdBu_r", vmin=-mlim, vmax=mlim,
                           interpolation="nearest")
        for ax, pic in ((axes[r, 2], vae_decoded[r]), (axes[r, 5], grf_decoded[r])):
            img, cmap = _as_rgb(pic)
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[:, 3:5], location="bottom", shrink=0.7, aspect=25, label="z (latent map value)")
    title = f"{vae} (latent vector, N(0, I) prior) vs {grf} (latent map, GRF prior)"
    fig.suptitle(title + (f" — {note}" if note else ""), fontsize=11)
    return _save(fig, out_path)
