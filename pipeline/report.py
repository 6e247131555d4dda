"""What the notebook shows, as plain functions: parameters from the environment, the
dataset (or the demo when there is none), the results tables and a summary computed from
them, the galleries and the README figures.

The notebook stays thin (each cell calls one of these), and the same code is testable
without Jupyter. Nothing here states a result in prose: every sentence is built from the
table it summarises.
"""
from __future__ import annotations

import io
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from models import model_label, size_label
from models.errors import CheckpointError, ConfigError, DatasetError
from models.mvtec import MVTecAD, category_type, dataset_name, image_dimensions, list_categories

from . import examples, plots, runs, stats
from .checkpoints import DEFAULT_CHECKPOINT_DIR, checkpoint_path, load_checkpoint
from .demo_data import DEFAULT_DATA_ROOT, choose_data_root, make_synthetic_dataset
from .demo_data import DEFAULT_DIR as DEFAULT_DEMO_DIR
from .sizes import Shapes

SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1")


# --------------------------------------------------------------------------------------
# Parameters


def env(name: str, default):
    """``default``, unless the environment variable ``name`` is set (the tests use this to run
    the notebook small). The value is parsed by the default's type: int, float, bool, str,
    a comma-separated list for list defaults (and for None defaults: None = "all"), JSON for dicts.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, dict):
            value = json.loads(raw or "{}")
            if not isinstance(value, dict):
                raise ValueError(raw)
            return value
        if default is None or isinstance(default, (list, tuple)):
            if raw.lower() in ("", "none", "all"):
                return None if default is None else list(default)
            parts = [part.strip() for part in raw.split(",") if part.strip()]
            if default and all(isinstance(x, int) and not isinstance(x, bool) for x in default):
                return [int(part) for part in parts]  # a list of whole numbers (seeds) stays one
            return parts
    except ValueError:
        kind = type(default).__name__ if default is not None else "comma-separated list"
        raise ConfigError(
            f"environment variable {name}={raw!r} is not a valid {kind}; unset it or fix its value."
        ) from None
    return raw


# --------------------------------------------------------------------------------------
# Data


def find_or_make_dataset(data_root=None, demo_dir=DEFAULT_DEMO_DIR, *, seed: int = 0, **demo_options) -> Path:
    """The data root to train on, by the command line's rule (``demo_data.choose_data_root``):
    ``data_root`` if the user named one (it must hold a category, else a DatasetError naming
    it); with None or "" (not named), ./mvtec_anomaly_detection if it exists; otherwise say so
    in one sentence, write the built-in demo dataset to ``demo_dir`` (kept if already there)
    and return it. ``demo_options`` go to ``make_synthetic_dataset`` (the tests make a tiny demo)."""
    root = choose_data_root(data_root)
    if root is None:
        print(f"No dataset found at ./{DEFAULT_DATA_ROOT}, so the built-in demo dataset is used (written to "
              f"{demo_dir}); its rows are named 'demo' in the results.")
        return Path(make_synthetic_dataset(demo_dir, seed=seed, **demo_options))
    if not os.path.lexists(root):
        raise DatasetError(f"data root {root} does not exist; fix DATA_ROOT (or AD_DATA_ROOT / MVTEC_ROOT), or leave "
                           f"it empty to use ./{DEFAULT_DATA_ROOT}, or the demo dataset when that is absent.")
    list_categories(root)  # a named folder without categories is an error naming it, never a switch to the demo
    return root


def describe_dataset(root) -> pd.DataFrame:
    """One row per category: its type, number of images and their shape (from the file
    headers: the median width x height and the aspect ratios, width:height); what the
    notebook is about to train on. A category whose headers cannot be read shows "?" there
    (its jobs will say which file when the grid runs)."""
    rows, dataset = [], dataset_name(root)
    for c in list_categories(root):
        try:
            dims = image_dimensions(root, c)
        except DatasetError:
            dims = None
        shape = {"images": "?", "median size (w x h)": "?", "aspect (w:h)": "?"}
        if dims:
            shape = {"images": len(dims),
                     "median size (w x h)": "x".join(str(int(statistics.median(v))) for v in zip(*dims)),
                     "aspect (w:h)": Shapes.of(dims).range_text()}
        elif dims is not None:
            shape["images"] = 0
        rows.append({"dataset": dataset, "category": c, "category_type": category_type(root, c), **shape})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Tables and summary


F1_FLOOR_COLUMN = ("F1 floor", "flag every image")  # one column: the floor is the same for every model


def metric_tables(df: pd.DataFrame, metrics=SUMMARY_METRICS) -> pd.DataFrame:
    """Categories (with texture / object / overall means) x (metric, model): the mean over
    seeds, as "mean ± sd" text when some cell has two or more seeds, else numbers rounded to 3;
    then the F1 floor (the F1 of calling every test image defective), so an F1 at the floor is
    not read as skill."""
    means = {plots.METRIC_LABELS.get(m, m): plots.results_table(df, m) for m in metrics}
    out = pd.concat(means, axis=1)
    out.columns.names = ["metric", "model"]
    floor = plots.results_table(df, "f1_floor").max(axis=1)  # equal for all models of a category
    if plots.aggregate_seeds(df, list(metrics))["n_seeds"].max() < 2:
        out[F1_FLOOR_COLUMN] = floor
        return out.round(3)
    sds = pd.concat({plots.METRIC_LABELS.get(m, m): plots.results_table(df, m, stat="sd") for m in metrics}, axis=1)
    sds.columns.names = out.columns.names
    sds = sds.reindex(index=out.index, columns=out.columns)
    text = out.copy().astype(object)
    for col in out.columns:
        text[col] = [f"{m:.3f} ± {sd:.3f}" if np.isfinite(m) and np.isfinite(sd) else _fmt(m)
                     for m, sd in zip(out[col], sds[col])]
    text[F1_FLOOR_COLUMN] = [_fmt(x) for x in floor]
    return text


def seeds_note(df: pd.DataFrame) -> str:
    """How many seeds the table's means are over, e.g. "mean ± sd over 3 seeds (0, 1, 2)"."""
    seeds = sorted({int(s) for s in df["seed"].dropna()})
    if len(seeds) <= 1:
        return f"one seed ({seeds[0] if seeds else 'n/a'}): no seed-to-seed spread is shown"
    return f"mean ± sd over {len(seeds)} seeds ({', '.join(map(str, seeds))})"


class Markdown(str):
    """A string that a notebook renders as Markdown (and a terminal prints as text)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3f}"


def verdicts(df: pd.DataFrame, results_csv=None, *, n_boot: int = 2000) -> tuple[pd.DataFrame, list[str]]:
    """The paired bootstrap between every pair of models of ``df`` (``stats.pairwise_verdicts``),
    from the rows' per-image side files next to ``results_csv`` (default: where the grid wrote
    them, ``df.attrs["results_csv"]``); and the rows that have no side file (left out)."""
    csv = results_csv or df.attrs.get("results_csv")
    if csv is None:
        return pd.DataFrame(), ["every row (no results CSV given)"]
    d = plots.prepare_results(df)
    run_scores, missing = runs.read_runs(d, csv)
    models = list(dict.fromkeys(d["model"]))
    return stats.pairwise_verdicts(run_scores, models, n_boot=n_boot), missing


def _bound(x: float) -> str:
    """An interval bound to 3 decimals, or 4 when 3 would round a non-zero bound to 0 (its sign decides the verdict)."""
    return f"{x:+.4f}" if x != 0 and round(x, 3) == 0 else f"{x:+.3f}"


def _verdict_lines(table: pd.DataFrame, missing: list[str]) -> list[str]:
    """The summary's Markdown table of pairwise differences."""
    left_out = ["", f"Left out (no per-image scores): {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + "."] if missing else []
    if table.empty or (table["verdict"] == "no data").all():
        return ["", "Differences between models: no pair of models has per-image scores of the same categories "
                    "and seeds (rows written by an older version, or side files deleted), so no interval can be "
                    "computed."] + left_out
    n_seeds = int(table["n_seeds"].max())
    seeds = f"{n_seeds} seeds" if n_seeds > 1 else "1 seed, so test-image variation only"
    lines = ["", f"Differences between models (mean over categories of A - B; 95 % paired bootstrap interval over "
                 f"test images and {seeds}; a verdict only where the interval excludes 0):", "",
             "| A vs B | " + " | ".join(plots.METRIC_LABELS[m] for m in dict.fromkeys(table["metric"])) + " |",
             "|---" * (1 + table["metric"].nunique()) + "|"]
    for (a, b), g in table.groupby(["model_a", "model_b"], sort=False):
        cells = []
        for _, r in g.iterrows():
            if not np.isfinite(r["estimate"]):
                cells.append("n/a")
                continue
            better = {f"{a} better": a, f"{b} better": b}.get(r["verdict"])  # stats names models by registry name
            verdict = f"{model_label(better)} better" if better else r["verdict"]
            cells.append(f"{r['estimate']:+.3f} [{_bound(r['low'])}, {_bound(r['high'])}]: {verdict}")
        lines.append(f"| {model_label(a)} vs {model_label(b)} | " + " | ".join(cells) + " |")
    return lines + left_out


def summary(df: pd.DataFrame, metrics=SUMMARY_METRICS, *, results_csv=None, n_boot: int = 2000) -> Markdown:
    """Best model per category type, wins per model, and whether each pair of models differs
    by more than seed-to-seed and test-sample variation, all computed from the results.

    "Best" = highest mean over the categories of that type (each category's value is the mean
    over its seeds; NaN categories skipped); a "win" = the highest mean in one category (ties
    count for every tied model). The differences come from ``verdicts`` (per-image side files).
    """
    table, missing = verdicts(df, results_csv, n_boot=n_boot)
    d = plots.aggregate_seeds(df, list(metrics))
    models = list(dict.fromkeys(d["model"]))
    types = [t for t in plots.TYPE_ORDER if (d["category_type"] == t).any()]
    n_cats = d["label"].nunique()
    label = model_label
    per_type = d.drop_duplicates("label")["category_type"].value_counts()
    lines = [
        f"**{plots.dataset_note(d).capitalize()}**: {n_cats} categories "
        f"({', '.join(f'{per_type[t]} {t}' for t in types)}), {len(models)} models.",
        "",
        "Best model per category type (mean over its categories):",
        "",
        "| category type | " + " | ".join(plots.METRIC_LABELS[m] for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    groups = [(t, d[d["category_type"] == t]) for t in types] + ([("all", d)] if len(types) > 1 else [])
    for name, g in groups:
        cells = []
        for m in metrics:
            means = g.groupby("model")[m].mean().dropna()
            if means.empty:
                cells.append("n/a")
                continue
            best = means[means == means.max()].index
            cells.append(f"{', '.join(label(b) for b in best)} ({_fmt(means.max())})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["",
              f"Wins per model (categories, out of {n_cats}, where it has the highest value; ties count for each):",
              "",
              "| model | " + " | ".join(plots.METRIC_LABELS[m] for m in metrics) + " |",
              "|---" * (len(metrics) + 1) + "|"]
    wins = {m: {k: 0 for k in models} for m in metrics}
    for m in metrics:
        for _, g in d.groupby("label"):
            vals = g.set_index("model")[m].dropna()
            if not vals.empty:
                for k in vals[vals == vals.max()].index:
                    wins[m][k] += 1
    for k in models:
        lines.append(f"| {label(k)} | " + " | ".join(str(wins[m][k]) for m in metrics) + " |")
    lines += _verdict_lines(table, missing)
    return Markdown("\n".join(lines))


def figures(df: pd.DataFrame, out_dir, results_csv=None) -> list:
    """The comparison figures of ``df`` and its training curves (``plots.make_all_figures``);
    the curves come from the side files next to ``results_csv`` (default ``df.attrs["results_csv"]``)."""
    csv = results_csv or df.attrs.get("results_csv")
    curves = runs.read_curves(df, csv) if csv is not None else None  # make_all_figures keeps the plotted ones
    return plots.make_all_figures(df, out_dir, curves=curves)


# --------------------------------------------------------------------------------------
# Figures in the notebook


PREVIEW_MAX_BYTES = 150_000  # larger figures are shown as a JPEG preview (the PNG stays on disk; notebook < 2 MB)
PREVIEW_WIDTH = 1000  # px
PREVIEW_QUALITY = 75  # JPEG quality of a preview: the executed notebook stays under 2 MB


def _preview(path: Path):
    """An IPython Image of ``path``: the PNG itself if small, else a downscaled JPEG, so the
    executed notebook stays a few MB instead of embedding every full-size gallery."""
    from IPython.display import Image as IPyImage  # only called from show(), in a notebook: see there

    if path.stat().st_size <= PREVIEW_MAX_BYTES:
        return IPyImage(filename=str(path))
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > PREVIEW_WIDTH:
            im = im.resize((PREVIEW_WIDTH, round(im.height * PREVIEW_WIDTH / im.width)), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=PREVIEW_QUALITY)
    return IPyImage(data=buf.getvalue(), format="jpeg")


def show(paths) -> None:
    """Display figure files inline in a notebook (large ones as a preview); print their paths elsewhere."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    try:  # IPython only here: it costs 0.2-0.3 s to import and is needed only in a notebook
        from IPython import get_ipython
        from IPython.display import display

        inline = get_ipython() is not None and hasattr(get_ipython(), "kernel")
    except ImportError:
        inline = False
    for p in paths:
        if inline:
            print(p)
            display(_preview(Path(p)))
        else:
            print(f"wrote {p}")


# --------------------------------------------------------------------------------------
# Trained models: galleries and the README's GRF figures


def find_checkpoint(row, checkpoint_dir=DEFAULT_CHECKPOINT_DIR) -> Path | None:
    """The checkpoint job.run_job saved for ``row`` (``checkpoints.checkpoint_path``), or None."""
    train_hash = row.get("train_hash")
    if not isinstance(train_hash, str) or not train_hash:  # a row of version 1 named its checkpoint by its config_hash
        train_hash = row["config_hash"]
    path = checkpoint_path(checkpoint_dir, dataset=row["dataset"], category=row["category"], model=row["model"],
                           train_hash=train_hash)
    return path if path.is_file() else None


def load_trained(rows: pd.DataFrame, category: str, checkpoint_dir=DEFAULT_CHECKPOINT_DIR, device="cpu") -> dict:
    """Model name -> trained model of ``category`` (rows without a checkpoint are skipped); with
    several seeds, the model of the lowest seed that has a checkpoint (figures show one model each).
    A checkpoint that cannot be loaded (damaged, another version) is skipped with a printed
    note: one bad file must not stop the figures of every other model."""
    out = {}
    d = plots.prepare_results(rows)
    for _, row in d[d["category"] == category].sort_values("seed", kind="stable").iterrows():
        if row["model"] in out:
            continue
        path = find_checkpoint(row, checkpoint_dir)
        if path is None:
            continue
        try:
            out[row["model"]] = load_checkpoint(path, model=row["model"], device=device)
        except CheckpointError as e:
            print(f"{row['model']} on {category!r} is left out of the figures: {e}")
    return out


def _test_split(data_root, category: str, model):
    c = model.config
    return MVTecAD(data_root, category, "test", image_size=c.image_size, in_channels=c.in_channels)


def _same_input(trained: dict, category: str) -> dict:
    """The models of ``trained`` that take the first one's input (size, channels): one test split
    feeds them all. Models trained at another size (rows of another --image-size or --aspect)
    are left out, with a line saying so."""
    first = next(iter(trained.values())).config
    same = {n: m for n, m in trained.items()
            if (m.config.image_size, m.config.in_channels) == (first.image_size, first.in_channels)}
    if len(same) < len(trained):
        print(f"{category}: {', '.join(n for n in trained if n not in same)} left out of its figures: trained at "
              f"another input size than {size_label(first.image_size)} px.")
    return same


def galleries(rows: pd.DataFrame, data_root, out_dir, checkpoint_dir=DEFAULT_CHECKPOINT_DIR, *, n_good: int = 2,
              n_defect: int = 4) -> list[Path]:
    """``gallery_<category>.png`` in ``out_dir`` for each category of ``rows`` that has checkpoints."""
    d = plots.prepare_results(rows)
    paths = []
    for category in dict.fromkeys(d["category"]):
        trained = load_trained(d, category, checkpoint_dir)
        if not trained:
            print(f"no usable checkpoints for {category!r} under {checkpoint_dir}; its gallery is skipped.")
            continue
        trained = _same_input(trained, category)
        test = _test_split(data_root, category, next(iter(trained.values())))
        ex = examples.gallery_examples(trained, test, n_good=n_good, n_defect=n_defect)
        paths.append(plots.anomaly_gallery(Path(out_dir) / f"gallery_{category}.png", images=ex.images, masks=ex.masks,
                                           row_labels=ex.row_labels, reconstructions=ex.reconstructions,
                                           maps=ex.maps, category=ex.category))
    return paths


def grf_figures(rows: pd.DataFrame, data_root, out_dir, checkpoint_dir=DEFAULT_CHECKPOINT_DIR) -> list[Path]:
    """``grf.png`` (prior samples) and ``vae-vae-grf.png`` in ``out_dir``. The second uses the
    trained VAE and VAE-GRF of the first category (textures first) that has both, on one good
    and one defective test image. Without such a pair (e.g. a rerun whose rows all came from the
    CSV, on a machine without their checkpoints) it is skipped with a note: a figure of untrained
    models must not replace one of trained models. ``examples.latent_examples()`` draws untrained
    ones on purpose."""
    out_dir = Path(out_dir)
    prior = examples.grf_prior_samples()
    paths = [plots.grf_prior_figure(out_dir / "grf.png", samples=prior.samples, kernels=prior.kernels, rhos=prior.rhos,
                                    distances=prior.distances, kernel_values=prior.kernel_values)]
    d = plots.prepare_results(rows)
    for category in dict.fromkeys(d["category"]):
        trained = load_trained(d[d["model"].isin(["vae", "vae_grf"])], category, checkpoint_dir)
        if len(trained) == 2 and len(_same_input(trained, category)) == 2:
            vae, vae_grf = trained["vae"], trained["vae_grf"]
            test = _test_split(data_root, category, vae)
            idx = examples.pick_examples(np.asarray(test.labels), list(test.defect_types), 1, 1)
            images = test.images[idx].float() / 255.0  # (N, C, H, W)
            note = f"trained on {d['dataset'].iloc[0]}/{category}, test images"
            break
    else:
        print(f"no checkpoints of a trained VAE and VAE-GRF of one category under {checkpoint_dir}; "
              f"{out_dir / 'vae-vae-grf.png'} is left as it is (delete the results CSV to retrain).")
        return paths
    ex = examples.latent_examples(vae, vae_grf, images)
    paths.append(plots.vae_vs_grf_figure(out_dir / "vae-vae-grf.png", images=ex.images, vae_z=ex.vae_z,
                                         vae_decoded=ex.vae_decoded, grf_z=ex.grf_z, grf_decoded=ex.grf_decoded,
                                         note=note))
    return paths
