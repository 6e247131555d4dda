"""Figures: the model comparison from the results CSV, anomaly-map galleries, GRF figures.

Everything here draws on ``matplotlib.figure.Figure`` objects with the Agg canvas, never on
pyplot's global state: nothing is switched at import time, nothing leaks between calls,
and the same code runs headless (CLI, tests) and in a notebook (which shows the PNGs).

The comparison figures read only the results table (docs/design.md, "The results CSV"); the
entry point for the command line is ``make_all_figures(df, out_dir)``. The galleries and
the GRF figures draw arrays they are given (``examples`` runs the models and samples the
prior): nothing here builds, runs or samples a model. Models are named, ordered and
coloured by the registry (``models.MODEL_NAMES``, each class's ``label``): each keeps one
colour in every figure (``model_colors``). Categories are ordered textures, then objects,
then custom categories, and the split is marked where it helps reading.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import models
from models import model_label
from models.errors import DatasetError

METRIC_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AU-PRO (FPR ≤ 0.3)",
    "f1": "F1 (threshold from val normals)",
    "f1_max": "F1 max (oracle threshold)",
}
SHORT_LABELS = {"image_auroc": "AUROC", "pixel_auroc": "AUROC", "aupro": "AU-PRO", "f1": "F1", "f1_max": "F1"}
TYPE_ORDER = ("texture", "object", "custom")
REQUIRED_COLUMNS = ("dataset", "category", "category_type", "model", "image_auroc", "pixel_auroc", "aupro", "f1")
FIGURE_NAMES = ("f1_score_comparison.png", "roc_auc_comparison.png", "roc_auc_heatmap.png", "metrics_distribution.png")
DPI = 130
GALLERY_DPI = 100  # galleries are mostly photographs: 100 dpi keeps them ~1 MB and still sharp


# --------------------------------------------------------------------------------------
# Shared helpers


@functools.cache
def _seaborn():
    """seaborn, imported on first use, not with this module: it costs about 1 s more than
    matplotlib (it loads scipy.stats, and IPython through ipywidgets), and this module is also
    imported where nothing is drawn (``python -m pipeline run``, the report's tables)."""
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


def prepare_results(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to plot: one per (dataset, category, model), ordered for display.

    The CSV is a cache that may hold several configs of the same pair (another seed,
    image size, ...); the most recently finished row is the one plotted. Adds the column
    ``label`` (the category, suffixed with its dataset when several datasets are present).
    """
    if df is None or len(df) == 0:
        raise DatasetError("the results table is empty; run `python -m pipeline run` (or the notebook) first.")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"the results table lacks column(s) {', '.join(missing)}; "
            "use a CSV written by `python -m pipeline run` or grid.run_grid."
        )
    d = df.copy()
    d["category"] = d["category"].astype(str)
    d["category_type"] = d["category_type"].fillna("custom").astype(str)
    if "finished_at" in d.columns:
        d = d.sort_values("finished_at", kind="stable")
    d = d.drop_duplicates(["dataset", "category", "model"], keep="last")
    several = d["dataset"].nunique() > 1
    d["label"] = d["category"] + (" (" + d["dataset"].astype(str) + ")" if several else "")
    type_rank = {t: i for i, t in enumerate(TYPE_ORDER)}
    d["_type_rank"] = d["category_type"].map(lambda t: type_rank.get(t, len(TYPE_ORDER)))
    model_rank = {m: i for i, m in enumerate(models.MODEL_NAMES)}
    d["_model_rank"] = d["model"].map(lambda m: model_rank.get(m, len(model_rank)))
    d = d.sort_values(["_type_rank", "category", "dataset", "_model_rank", "model"], kind="stable")
    return d.drop(columns=["_type_rank", "_model_rank"]).reset_index(drop=True)


def _categories(d: pd.DataFrame) -> list[tuple[str, str]]:
    """Ordered (label, category_type) pairs."""
    return list(dict.fromkeys(zip(d["label"], d["category_type"])))


def _models(d: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(d["model"]))


def dataset_note(d: pd.DataFrame) -> str:
    """'dataset: <names>' of a prepared results table, for titles and the report summary."""
    return "dataset: " + ", ".join(sorted(d["dataset"].astype(str).unique()))


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


def _grouped_bars(ax, d, metric, cats, names, colors, *, oracle: str | None = None):
    """Bars of ``metric`` per category (x) and model (hue); NaN cells are marked 'n/a'."""
    n = len(names)
    width = 0.8 / n
    x = np.arange(len(cats))
    index = {lab: i for i, (lab, _) in enumerate(cats)}
    for j, m in enumerate(names):
        rows = d[d["model"] == m]
        xs = np.array([index[lab] for lab in rows["label"]]) - 0.4 + width * (j + 0.5)
        ys = rows[metric].to_numpy(dtype=float)
        ok = np.isfinite(ys)
        ax.bar(xs[ok], ys[ok], width=width * 0.92, color=colors[m], label=model_label(m))
        for xi in xs[~ok]:
            ax.text(xi, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
        for xi in xs[ok & (ys == 0)]:  # a zero has no bar: say so, so it is not read as missing
            ax.text(xi, 0.02, "0", ha="center", va="bottom", fontsize=7, color=colors[m])
        if oracle is not None:
            yo = rows[oracle].to_numpy(dtype=float)
            ok = np.isfinite(yo)
            ax.scatter(xs[ok], yo[ok], marker="_", s=(width * 300) ** 2 / 40, color="black", lw=1.5, zorder=3,
                       label="F1 max (oracle)" if j == 0 else None)
    ax.set_xticks(x, [lab for lab, _ in cats], rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(cats) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="x", visible=False)
    _mark_type_groups(ax, cats, label_y=1.06)


def _bar_width(n_cats: int, n_models: int) -> float:
    return float(np.clip(2.5 + 0.22 * n_cats * max(n_models, 2), 7.0, 22.0))


def f1_score_comparison(df: pd.DataFrame, out_path) -> Path:
    """Grouped bars of F1 at the honest threshold (from val normals) per category x model,
    with the oracle F1 max as a black tick over each bar for reference."""
    d = prepare_results(df)
    cats, names = _categories(d), _models(d)
    colors = model_colors(names)
    with _style():
        fig = _new_figure(_bar_width(len(cats), len(names)), 4.6)
        ax = fig.add_subplot()
        oracle = "f1_max" if "f1_max" in d.columns else None
        _grouped_bars(ax, d, "f1", cats, names, colors, oracle=oracle)
        ax.set_xlabel("category")
        ax.set_title(f"F1 per category and model ({dataset_note(d)})")
        fig.legend(loc="outside right center", frameon=False)
    return _save(fig, out_path)


def roc_auc_comparison(df: pd.DataFrame, out_path) -> Path:
    """Grouped bars of image AUROC (top) and pixel AUROC (bottom) per category x model."""
    d = prepare_results(df)
    cats, names = _categories(d), _models(d)
    colors = model_colors(names)
    with _style():
        fig = _new_figure(_bar_width(len(cats), len(names)), 8.0)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
            _grouped_bars(ax, d, metric, cats, names, colors)
            ax.axhline(0.5, color="0.3", lw=1, ls=":")
            ax.set_title(f"{METRIC_LABELS[metric]} (dotted line: chance)", fontsize=10)
        axes[0].tick_params(labelbottom=False)
        axes[1].set_xlabel("category")
        fig.suptitle(f"ROC AUC per category and model ({dataset_note(d)})")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", frameon=False)
    return _save(fig, out_path)


def results_table(df: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Category x model table of ``metric`` with texture / object / overall mean rows.

    Index: the categories (ordered textures, objects, custom), then "texture mean" and
    "object mean" when that type is present, then "overall mean" (the mean over
    categories, NaN cells skipped). Columns: display names of the models.
    """
    d = prepare_results(df)
    cats, names = _categories(d), _models(d)
    table = d.pivot(index="label", columns="model", values=metric).reindex(
        index=[lab for lab, _ in cats], columns=names
    )
    types = pd.Series({lab: t for lab, t in cats})
    rows = [table]
    for t in ("texture", "object"):
        if (types == t).any() and (types != t).any():
            rows.append(table[types.reindex(table.index).eq(t).to_numpy()].mean().to_frame(f"{t} mean").T)
    rows.append(table.mean().to_frame("overall mean").T)
    out = pd.concat(rows)
    out.columns = [model_label(m) for m in out.columns]
    out.index.name = "category"
    out.columns.name = METRIC_LABELS.get(metric, metric)
    return out


def roc_auc_heatmap(df: pd.DataFrame, out_path) -> Path:
    """Annotated heatmaps (category x model) of image AUROC and pixel AUROC, with mean rows.

    Colour scale fixed to [0, 1] and centred on 0.5 (chance): red is worse than chance,
    yellow is chance, green is good, whatever the data range.
    """
    d = prepare_results(df)
    cats = _categories(d)
    with _style():
        n_rows = len(cats) + 3
        n_models = len(_models(d))
        fig = _new_figure(max(7.0, 2.0 + 2.6 * n_models), max(3.5, 1.2 + 0.34 * n_rows))
        axes = fig.subplots(1, 2, sharey=True)
        for k, (ax, metric) in enumerate(zip(axes, ("image_auroc", "pixel_auroc"))):
            table = results_table(d, metric)
            _seaborn().heatmap(table, ax=ax, annot=True, fmt=".2f", vmin=0, vmax=1, center=0.5, cmap="RdYlGn",
                        linewidths=0.5, linecolor="white", cbar=k == 1, annot_kws={"fontsize": 8},
                        cbar_kws={"label": "AUROC (0.5 = chance)", "shrink": 0.8})
            ax.grid(False)
            ax.set_facecolor("0.93")  # NaN cells (metric not computable) stay light grey
            for (i, j) in zip(*np.nonzero(table.isna().to_numpy())):
                ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.45")
            ax.axhline(len(cats), color="black", lw=1.5)  # categories above, means below
            _mark_type_groups(ax, cats, axis="y")
            ax.set_title(METRIC_LABELS[metric])
            ax.set_xlabel("model")
            ax.set_ylabel("category" if k == 0 else "")
            ax.tick_params(axis="x", rotation=0)
            ax.tick_params(axis="y", rotation=0)
        fig.suptitle(f"ROC AUC per category and model ({dataset_note(d)})")
    return _save(fig, out_path)


def metrics_distribution(df: pd.DataFrame, out_path) -> Path:
    """Per model, the distribution over categories of image AUROC, pixel AUROC, AU-PRO and F1:
    a box per model and one marker per category (circle: texture, triangle: object)."""
    d = prepare_results(df)
    names = _models(d)
    colors = model_colors(names)
    labels = [model_label(m) for m in names]
    markers = {"texture": "o", "object": "^", "custom": "s"}
    rng = np.random.default_rng(0)  # jitter only; fixed so the PNG is reproducible
    with _style():
        fig = _new_figure(max(8.0, 3.0 + 1.6 * len(names)), 7.5)
        axes = fig.subplots(2, 2).ravel()
        for ax, metric in zip(axes, ("image_auroc", "pixel_auroc", "aupro", "f1")):
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
                for i, m in enumerate(names):
                    mean = sub.loc[sub["model"] == m, metric].mean()
                    ax.hlines(mean, i - 0.28, i + 0.28, color=colors[m], lw=3, label="mean" if i == 0 else None)
                ax.set_xticks(range(len(labels)), labels)
                ax.set_xlim(-0.6, len(labels) - 0.4)
                for t, marker in markers.items():
                    pts = sub[sub["category_type"] == t]
                    if pts.empty:
                        continue
                    xs = pts["model"].map({m: i for i, m in enumerate(names)}).to_numpy(dtype=float)
                    ax.scatter(xs + rng.uniform(-0.15, 0.15, len(xs)), pts[metric], marker=marker, s=22,
                               color="0.15", alpha=0.8, zorder=3, label=t)
            if metric != "f1" and metric != "aupro":
                ax.axhline(0.5, color="0.3", lw=1, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(METRIC_LABELS[metric], fontsize=10)
            ax.set_xlabel("model")
            ax.set_ylabel(SHORT_LABELS[metric])
        handles, entries = [], []
        for ax in axes:
            for h, n in zip(*ax.get_legend_handles_labels()):
                if n not in entries:
                    handles.append(h)
                    entries.append(n)
        if handles:
            fig.legend(handles, [n if n == "mean" else f"{n} category" for n in entries], loc="outside lower center",
                       ncols=len(entries), frameon=False)
        fig.suptitle(f"Metrics across categories, per model ({dataset_note(d)})")
    return _save(fig, out_path)


def make_all_figures(df: pd.DataFrame, out_dir) -> list[Path]:
    """The four comparison figures of docs/design.md, "Figures", written to ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    d = prepare_results(df)
    makers = (f1_score_comparison, roc_auc_comparison, roc_auc_heatmap, metrics_distribution)
    return [make(d, out_dir / name) for make, name in zip(makers, FIGURE_NAMES)]


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

    ``images`` (N, C, S, S) in [0, 1]; ``masks`` (N, S, S); ``row_labels`` one per image
    ("good" or its defect type); ``reconstructions`` / ``maps``: model name -> (N, C, S, S)
    / (N, S, S), drawn in that order. Each model's maps share one colour scale over all rows
    (0 to the 99.5th percentile), so a good and a defective image can be compared; maps are
    never normalised per image. The ground-truth outline is drawn on every map.
    """
    names = list(maps)
    masks = np.asarray(masks) > 0
    n_rows, n_cols = len(images), 2 + 2 * len(names)
    assert names and list(reconstructions) == names, "one reconstruction and one map per model, same order"
    assert len(masks) == len(row_labels) == n_rows, "one mask and one row label per image"
    assert all(len(maps[n]) == len(reconstructions[n]) == n_rows for n in names), "one map per image and model"
    colors = model_colors(names)
    fig = _new_figure(1.45 * n_cols + 0.6, 1.45 * n_rows + 1.3)
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
