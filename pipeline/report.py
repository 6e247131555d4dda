"""What the notebook shows, as plain functions: parameters from the environment, the
dataset it is about to train on, the results tables and a summary computed from them, the
galleries and the README figures.

The notebook stays thin (each cell calls one of these), and the same code is testable
without Jupyter. Nothing here states a result in prose: every sentence is built from the
table it summarises.
"""
from __future__ import annotations

import difflib
import io
import json
import os
import statistics
import warnings
from collections import Counter
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from models import model_label, size_label
from models.errors import CheckpointError, ConfigError, DatasetError
from models.mvtec import MVTecAD, category_type, dataset_name, image_dimensions, list_categories

from . import examples, plots, runs, stats, tables
from .checkpoints import DEFAULT_CHECKPOINT_DIR, checkpoint_path, load_checkpoint
from .files import plain_name
from .sizes import Shapes
from .thresholds import FEW_VAL_IMAGES

SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1")


# --------------------------------------------------------------------------------------
# Parameters


# The environment variables the notebook's parameters cell reads (tests/test_notebook.py keeps
# this list equal to the cell's): any other AD_* name is a misspelling, said by warn_unknown_env.
NOTEBOOK_ENV = ("AD_DATA_ROOT", "AD_CATEGORIES", "AD_MODELS", "AD_EPOCHS", "AD_MIN_STEPS", "AD_REPAIR", "AD_DEFECTS",
                "AD_IMAGE_SIZE", "AD_ASPECT", "AD_BATCH_SIZE", "AD_SEEDS", "AD_SCORE", "AD_EVAL_SIZE",
                "AD_THRESHOLD_RULE", "AD_DEVICE", "AD_EXECUTOR", "AD_RESULTS_CSV", "AD_CHECKPOINT_DIR",
                "AD_RESULTS_DIR", "AD_IMAGES_DIR", "AD_DEMO_DIR", "AD_DEMO_OPTIONS", "AD_MODEL_OVERRIDES")


def _env_error(name: str, raw: str, what: str) -> ConfigError:
    return ConfigError(f"environment variable {name}={raw!r} {what}; unset it or fix its value.")


def _env_list(name: str, raw: str, default) -> list | None:
    """A list parameter: comma-separated names, or a JSON list (which can hold any name, also
    "all", "none" or one with a comma); "", "all" and "none" alone are the default ("every")."""
    if raw.startswith("["):
        try:
            parts = json.loads(raw)
        except ValueError:
            parts = None
        if not isinstance(parts, list) or not all(isinstance(p, (str, int)) and not isinstance(p, bool)
                                                   for p in parts):
            raise _env_error(name, raw, 'is not a JSON list of names or numbers (e.g. ["all", "bottle"])')
        parts = [str(p) for p in parts]
    elif raw.lower() in ("", "none", "all"):
        return None if default is None else list(default)
    else:
        parts = [part.strip() for part in raw.split(",") if part.strip()]
    if default and all(isinstance(x, int) and not isinstance(x, bool) for x in default):
        try:
            return [int(part) for part in parts]  # a list of whole numbers (seeds) stays one
        except ValueError:
            raise _env_error(name, raw, "is not a comma-separated list of whole numbers (e.g. 0,1,2)") from None
    return parts


def _env_dict(name: str, raw: str, keys, values) -> dict:
    """A JSON object, whose keys must be among ``keys`` (None: any) and whose values of type ``values`` (None: any)."""
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _env_error(name, raw, 'is not a JSON object (e.g. {"key": value})')
    unknown = [k for k in value if keys is not None and k not in keys]
    if unknown:
        raise _env_error(name, raw, f"has the unknown key{'s' if len(unknown) > 1 else ''} "
                                    f"{', '.join(map(repr, unknown))}; valid keys: {', '.join(keys)}")
    wrong = [k for k, v in value.items() if values is not None and not isinstance(v, values)]
    if wrong:
        example = json.dumps({wrong[0]: {"setting": "value"}}) if values is dict else ""
        kind = "a JSON object" if values is dict else values.__name__
        raise _env_error(name, raw, f"gives {wrong[0]!r} the value {json.dumps(value[wrong[0]])}, but each value "
                                    f"must be {kind}" + (f" (e.g. {example})" if example else ""))
    return value


def env(name: str, default, *, keys=None, values: type | None = None):
    """``default``, unless the environment variable ``name`` is set (the tests use this to run
    the notebook small). The value is parsed by the default's type: int, float, bool, str,
    a list for list defaults (and for None defaults: None = "all"): comma-separated, or a JSON
    list for names such as "all" or "none" themselves; JSON for dicts, whose keys must be
    among ``keys`` and values of type ``values`` when given. A value that does not parse is a
    ConfigError naming the variable and what it must look like.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if isinstance(default, dict):
        return _env_dict(name, raw, keys, values)
    if default is None or isinstance(default, (list, tuple)):
        return _env_list(name, raw, default)
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise _env_error(name, raw, f"is not a valid {type(default).__name__}") from None
    return raw


def warn_unknown_env(known=NOTEBOOK_ENV, environ=None) -> None:
    """Warn once about environment variables named AD_* that the notebook does not read (a
    misspelt AD_EPOCH would otherwise be ignored in silence)."""
    environ = os.environ if environ is None else environ
    unknown = sorted(n for n in environ if n.startswith("AD_") and n not in known)
    if unknown:
        close = {n: difflib.get_close_matches(n, known, n=1, cutoff=0.8) for n in unknown}
        hints = [f"{n} (did you mean {close[n][0]}?)" if close[n] else n for n in unknown]
        warnings.warn(f"ignored the environment variable{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: the "
                      f"notebook reads only {', '.join(known)}.", stacklevel=2)


# --------------------------------------------------------------------------------------
# Data


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


class NotedTable(pd.DataFrame):
    """A table with a footnote (``attrs["note"]``) that a notebook shows under it and ``repr`` prints
    after it: the table's mean rows say which categories they leave out where it is read."""

    @property
    def _constructor(self):
        return NotedTable

    @property
    def note(self) -> str:
        return self.attrs.get("note", "")

    def _repr_html_(self) -> str:
        html = super()._repr_html_()
        note = escape(self.note).replace("\n", "<br>")
        return html + f"<p><small>{note}</small></p>" if self.note and html else html

    def __repr__(self) -> str:
        return super().__repr__() + (f"\n{self.note}" if self.note else "")


def metric_tables(df: pd.DataFrame, metrics=SUMMARY_METRICS) -> pd.DataFrame:
    """Categories (with texture / object / overall means) x (metric, model): the mean over
    seeds, as "mean ± sd" text when some cell has two or more seeds, else numbers rounded to 3;
    then the F1 floor (the F1 of calling every test image defective), so an F1 at the floor is
    not read as skill. The mean rows are over the categories where every model has a value
    (``tables.results_table``); the table's note (a ``NotedTable``) names the ones left out."""
    means = {tables.METRIC_LABELS.get(m, m): tables.results_table(df, m) for m in metrics}
    note = tables.combine_notes({label: tables.means_note(table) for label, table in means.items()})
    note = "\n".join(n for n in (note, few_val_note(df)) if n)  # and the F1 of categories with few val images
    out = NotedTable(_metric_cells(df, metrics, means))
    out.attrs["note"] = note
    return out


def _metric_cells(df: pd.DataFrame, metrics, means: dict) -> pd.DataFrame:
    """The cells of ``metric_tables``: numbers with one seed, "mean ± sd" text with more."""
    out = pd.concat(means, axis=1)
    out.columns.names = ["metric", "model"]
    floor = tables.results_table(df, "f1_floor").max(axis=1)  # equal for all models of a category
    if tables.aggregate_seeds(df, list(metrics))["n_seeds"].max() < 2:
        out[F1_FLOOR_COLUMN] = floor
        return out.round(3)
    sds = pd.concat({tables.METRIC_LABELS.get(m, m): tables.results_table(df, m, stat="sd") for m in metrics}, axis=1)
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


def few_val_note(df: pd.DataFrame) -> str:
    """A footnote naming the categories whose F1 threshold rests on fewer than
    ``thresholds.FEW_VAL_IMAGES`` val images (the rows' ``n_val``), or "" when there are none."""
    if "n_val" not in df or df.empty:
        return ""
    n_val = pd.to_numeric(df["n_val"], errors="coerce").groupby(df["category"].astype(str), sort=False).min()
    few = n_val[(n_val > 0) & (n_val < FEW_VAL_IMAGES)]
    if few.empty:
        return ""
    named = ", ".join(f"{c} ({int(n)} val image{'s' if n != 1 else ''})" for c, n in few.items())
    return (f"F1, precision and recall of {named} come from a threshold on fewer than {FEW_VAL_IMAGES} val "
            f"images, so they depend on which images were held out: compare models there by AUROC and AU-PRO.")


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
    d = tables.prepare_results(df)
    score_sets, missing = runs.read_score_sets(d, csv)
    score_sets, other_images = _on_the_same_test_images(score_sets)
    models = list(dict.fromkeys(d["model"]))
    return stats.pairwise_verdicts(score_sets, models, n_boot=n_boot), missing + other_images


def _on_the_same_test_images(score_sets: dict) -> tuple[dict, list[str]]:
    """The score sets whose test labels are those of most score sets of their category, and
    descriptions of the others (a side file of other data or copied from elsewhere): a paired
    bootstrap needs the same test images for every model, and one odd file must not stop the
    summary. Without a majority (two score sets that differ) every one of that category is left out."""
    by_category: dict = {}
    for key in score_sets:
        by_category.setdefault(key[1], []).append(key)  # key: (model, category, seed)
    kept, left_out = {}, []
    for keys in by_category.values():
        labels = {k: score_sets[k].labels.tobytes() for k in keys}
        counts = Counter(labels.values()).most_common(2)
        common = counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None
        for key in keys:
            if labels[key] == common:
                kept[key] = score_sets[key]
            else:
                model, category, seed = key
                left_out.append(f"{model} on {category} (seed {seed}; its scores are of other test images than "
                                "the other rows' of that category)")
    return kept, left_out


def _bound(x: float) -> str:
    """An interval bound to 3 decimals, or 4 when 3 would round a non-zero bound to 0 (its sign decides the verdict)."""
    return f"{x:+.4f}" if x != 0 and round(x, 3) == 0 else f"{x:+.3f}"


def _verdict_lines(table: pd.DataFrame, missing: list[str]) -> list[str]:
    """The summary's Markdown table of pairwise differences."""
    left_out = ["", f"Left out (no per-image scores): {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + "."] if missing else []
    if table.empty or (table["verdict"] == "no data").all():
        return ["", "Differences between models: no pair of models has per-image scores of the same categories "
                    "and seeds (side files deleted), so no interval can be computed."] + left_out
    n_seeds = int(table["n_seeds"].max())
    seeds = f"{n_seeds} seeds" if n_seeds > 1 else "1 seed, so test-image variation only"
    lines = ["", f"Differences between models (mean over categories of A - B; 95 % paired bootstrap interval over "
                 f"test images and {seeds}; a verdict only where the interval excludes 0):", "",
             "| A vs B | " + " | ".join(tables.METRIC_LABELS[m] for m in dict.fromkeys(table["metric"])) + " |",
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

    "Best" = highest mean over the categories of that type where every model has a value
    (each category's value is the mean over its seeds; the categories left out are named, as
    in ``tables.results_table``); a "win" = the highest mean in one category (ties count for
    every tied model). The differences come from ``verdicts`` (per-image side files).
    """
    table, missing = verdicts(df, results_csv, n_boot=n_boot)
    d = tables.aggregate_seeds(df, list(metrics))
    models = list(dict.fromkeys(d["model"]))
    types = [t for t in tables.TYPE_ORDER if (d["category_type"] == t).any()]
    n_cats = d["label"].nunique()
    label = model_label
    per_type = d.drop_duplicates("label")["category_type"].value_counts()
    lines = [
        f"**{tables.dataset_note(d).capitalize()}**: {n_cats} categories "
        f"({', '.join(f'{per_type[t]} {t}' for t in types)}), {len(models)} models.",
        "",
        "Best model per category type (mean over its categories):",
        "",
        "| category type | " + " | ".join(tables.METRIC_LABELS[m] for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    groups = [(t, d[d["category_type"] == t]) for t in types] + ([("all", d)] if len(types) > 1 else [])
    for name, g in groups:
        cells = []
        for m in metrics:
            means = _shared_means(g, m, models)
            if means.empty:
                cells.append("n/a")
                continue
            best = means[means == means.max()].index
            cells.append(f"{', '.join(label(b) for b in best)} ({_fmt(means.max())})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = tables.combine_notes({tables.METRIC_LABELS[m]: tables.missing_values_note(
        tables.category_table(d, m, models), "Means") for m in metrics})
    lines += ["", note.replace("\n", "; ")] if note else []
    lines += ["",
              f"Wins per model (categories, out of {n_cats}, where it has the highest value; ties count for each):",
              "",
              "| model | " + " | ".join(tables.METRIC_LABELS[m] for m in metrics) + " |",
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
    few_val = few_val_note(df)
    lines += ["", few_val] if few_val else []
    return Markdown("\n".join(lines))


def _shared_means(d: pd.DataFrame, metric: str, models: list) -> pd.Series:
    """Each model's mean of ``metric`` over the categories of ``d`` where every model has a value."""
    table = tables.category_table(d, metric, models)
    return table[tables.comparable(table)].mean().dropna()


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
    """The checkpoint the grid saved for ``row`` (``checkpoints.checkpoint_path``), or None (also for
    a row without a ``train_hash``, which names no checkpoint)."""
    train_hash = row.get("train_hash")
    if not isinstance(train_hash, str) or not train_hash:
        return None
    path = checkpoint_path(checkpoint_dir, dataset=row["dataset"], category=row["category"], model=row["model"],
                           train_hash=train_hash)
    return path if path.is_file() else None


def load_trained(rows: pd.DataFrame, category: str, checkpoint_dir=DEFAULT_CHECKPOINT_DIR, device="cpu") -> dict:
    """Model name -> trained model of ``category`` (rows without a checkpoint are skipped); with
    several seeds, the model of the lowest seed that has a checkpoint (figures show one model each).
    A checkpoint that cannot be loaded (damaged, another version) is skipped with a printed
    note: one bad file must not stop the figures of every other model."""
    out = {}
    d = tables.prepare_results(rows)
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
    d = tables.prepare_results(rows)
    paths = []
    for category in dict.fromkeys(d["category"]):
        trained = load_trained(d, category, checkpoint_dir)
        if not trained:
            print(f"no usable checkpoints for {category!r} under {checkpoint_dir}; its gallery is skipped.")
            continue
        trained = _same_input(trained, category)
        test = _test_split(data_root, category, next(iter(trained.values())))
        ex = examples.gallery_examples(trained, test, n_good=n_good, n_defect=n_defect)
        path = Path(out_dir) / f"gallery_{plain_name(category)}.png"  # the name may be a crafted CSV cell
        paths.append(plots.anomaly_gallery(path, images=ex.images, masks=ex.masks,
                                           row_labels=ex.row_labels, reconstructions=ex.reconstructions,
                                           maps=ex.maps, category=ex.category))
    return paths


def grf_figures(rows: pd.DataFrame, data_root, out_dir, checkpoint_dir=DEFAULT_CHECKPOINT_DIR) -> list[Path]:
    """``grf.png`` (prior samples) and ``vae-vae-grf.png`` in ``out_dir``. The second uses the
    trained VAE and VAE-GRF of the first category (textures first) that has both, on one good
    and one defective test image. Without such a pair (e.g. a rerun whose rows all came from the
    CSV, on a machine without their checkpoints) it is skipped with a note: a figure of untrained
    models must not replace one of trained models."""
    out_dir = Path(out_dir)
    prior = examples.grf_prior_samples()
    paths = [plots.grf_prior_figure(out_dir / "grf.png", samples=prior.samples, kernels=prior.kernels, rhos=prior.rhos,
                                    distances=prior.distances, kernel_values=prior.kernel_values)]
    d = tables.prepare_results(rows)
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
