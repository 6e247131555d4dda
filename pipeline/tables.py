"""The results tables that the figures and the report read: the rows to show, their means over
seeds, category x model tables with mean rows, and the footnotes that say what a table leaves out.

The CSV is a cache that may hold several configs and seeds per (dataset, category, model)
(docs/design.md, "The results CSV"): ``prepare_results`` keeps the latest config with every seed
of it, ``aggregate_seeds`` gives one row per (dataset, category, model), the mean over seeds, and
``results_table`` a category x model table with texture / object / overall mean rows over the
categories where every model has a value (``comparable``). Rows are ordered textures, then
objects, then custom categories, and models in registry order (``models.MODEL_NAMES``), each
named by its class's ``label``. ``plots`` draws these tables and ``report`` shows them; nothing
here draws.
"""
from __future__ import annotations

import json

import pandas as pd

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
TYPE_ORDER = ("texture", "object", "custom")
REQUIRED_COLUMNS = ("dataset", "category", "category_type", "model", "image_auroc", "pixel_auroc", "aupro", "f1")
# Averaged over seeds by aggregate_seeds (f1_floor: F1 of calling every test image defective).
AGGREGATED_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall", "f1_max", "f1_floor")
# prepare_results' attrs key of the footnote that says which rows of older configs were left out.
LEFT_OUT_ATTR = "left_out_note"
# results_table's attrs key of the footnote that says which categories its mean rows leave out.
MEANS_NOTE_ATTR = "means_note"


def prepare_results(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to plot: one per (dataset, category, model, seed), ordered for display.

    The CSV is a cache that may hold several configs of the same pair (another image size,
    more epochs ...) and, per config, several seeds. For each (dataset, category, model) the
    most recently finished config is the one plotted, with every seed of it (configs are told
    apart by ``config_json`` without its seed; rows without it count as one config); per seed,
    the most recent row. ``aggregate_seeds`` turns these rows into one per (dataset, category,
    model). Adds the column ``label`` (the category, suffixed with its dataset when several
    datasets are present), and ``seed`` (0) to a table without one.
    """
    if df is None or len(df) == 0:
        raise DatasetError("the results table is empty; run `python -m pipeline run` (or the notebook) first.")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"the results table lacks column(s) {', '.join(missing)}; "
            "use a CSV written by `python -m pipeline run` or grid.run_grid."
        )
    d = df.copy().reset_index(drop=True)  # unique labels: the left-out rows are told apart by them
    d["category"] = d["category"].astype(str)
    d["category_type"] = d["category_type"].fillna("custom").astype(str)
    if "seed" not in d.columns:
        d["seed"] = 0
    if "finished_at" in d.columns:
        d = d.sort_values("finished_at", kind="stable")
    kept = _latest_config(d)
    kept = kept.drop_duplicates(["dataset", "category", "model", "seed"], keep="last")
    out = in_display_order(kept, then=["seed"])
    # What was left out, for the figures' footnote (LEFT_OUT_ATTR); a table prepared before
    # (make_all_figures hands its prepared rows on) keeps the note of its first preparation.
    left_out = d.loc[~d.index.isin(kept.index)]
    out.attrs[LEFT_OUT_ATTR] = _left_out_note(left_out, kept) if len(left_out) else df.attrs.get(LEFT_OUT_ATTR, "")
    return out


def _flat(config) -> dict:
    """A config dict as {leaf key: value} (the last key of each path: epochs, latent_dim, score_map ...)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v))
        else:
            out[k] = v
    return out


def _config_diff(old_json, new_json) -> str:
    """'epochs 1 -> 2, image_size 32 -> 64': where an older row's config differs from the drawn one."""
    try:
        old, new = _flat(json.loads(_config_without_seed(old_json))), _flat(json.loads(_config_without_seed(new_json)))
    except (TypeError, ValueError, AttributeError):
        return "another config"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    fmt = lambda v: "-" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    changes = [f"{k} {fmt(old.get(k))} -> {fmt(new.get(k))}" for k in keys]
    if len(changes) > 4:
        changes = changes[:4] + [f"{len(changes) - 4} more settings"]
    return ", ".join(changes) or "the same config, run again"


def _left_out_note(left_out: pd.DataFrame, kept: pd.DataFrame) -> str:
    """One line per kind of difference: which (category, model) pairs had rows left out, how
    many, and how their config differs from the one drawn (the pair's latest)."""
    pair = ["dataset", "category", "model"]
    drawn = kept.groupby(pair, sort=False).tail(1).set_index(pair)
    groups: dict[str, list] = {}
    for _, row in left_out.iterrows():
        key = tuple(row[pair])
        if "config_json" in left_out.columns and key in drawn.index:
            diff = _config_diff(row["config_json"], drawn.loc[key, "config_json"])
        else:
            diff = "another config"
        groups.setdefault(diff, []).append(row)
    ordered = sorted(groups.items(), key=lambda g: -len(g[1]))  # the most rows first
    lines = []
    for diff, rows in ordered:
        pairs = list(dict.fromkeys((r["category"], r["model"]) for r in rows))
        where = ", ".join(f"{model_label(m)} on {c}" for c, m in pairs[:3])
        if len(pairs) > 3:
            where += f" and {len(pairs) - 3} more"
        count = f"{len(rows)} row{'s' if len(rows) > 1 else ''}"
        if len(pairs) == 1 and "config_hash" in kept.columns:  # one pair: name the config drawn
            hashes = kept.loc[(kept["category"] == pairs[0][0]) & (kept["model"] == pairs[0][1]), "config_hash"]
            count += f"; drawn: config_hash {', '.join(dict.fromkeys(hashes.astype(str)))}"
        lines.append(f"{where} ({count}): {diff}")
    if len(lines) > 3:
        rest = sum(len(r) for _, r in ordered[3:])
        lines = lines[:3] + [f"and {rest} more rows of other older configs"]
    return (f"Drawn: the latest config of each (category, model); {len(left_out)} row"
            f"{'s' if len(left_out) > 1 else ''} of older configs left out (older -> drawn):\n" + "\n".join(lines))


def left_out_note(d: pd.DataFrame) -> str:
    """The footnote of a prepared table (``prepare_results``): the rows of older configs it
    left out, and how they differ from the config drawn; '' when nothing was left out."""
    return d.attrs.get(LEFT_OUT_ATTR, "")

def _config_without_seed(config_json) -> str:
    """A row's config (its ``config_json``) with the seed taken out: equal for the seeds of one config."""
    if not isinstance(config_json, str) or not config_json:
        return ""
    try:
        config = json.loads(config_json)
    except ValueError:
        return config_json
    config.pop("seed", None)
    if isinstance(config.get("train"), dict):
        config["train"].pop("seed", None)
    return json.dumps(config, sort_keys=True)


def _latest_config(d: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (dataset, category, model)'s last config (``d`` is in time order):
    seeds of one config are averaged, rows of an older config are not mixed in."""
    if "config_json" not in d.columns:
        return d
    config = d["config_json"].map(_config_without_seed)
    latest = config.groupby([d["dataset"], d["category"], d["model"]]).transform("last")
    return d[config == latest]


def in_display_order(d: pd.DataFrame, then=()) -> pd.DataFrame:
    """``d`` with its ``label`` column, sorted textures, objects, custom, then category,
    dataset, model in registry order, then the columns ``then``."""
    d = d.copy()
    several = d["dataset"].nunique() > 1
    d["label"] = d["category"] + (" (" + d["dataset"].astype(str) + ")" if several else "")
    type_rank = {t: i for i, t in enumerate(TYPE_ORDER)}
    d["_type_rank"] = d["category_type"].map(lambda t: type_rank.get(t, len(TYPE_ORDER)))
    model_rank = {m: i for i, m in enumerate(models.MODEL_NAMES)}
    d["_model_rank"] = d["model"].map(lambda m: model_rank.get(m, len(model_rank)))
    d = d.sort_values(["_type_rank", "category", "dataset", "_model_rank", "model", *then], kind="stable")
    return d.drop(columns=["_type_rank", "_model_rank"]).reset_index(drop=True)


def aggregate_seeds(df: pd.DataFrame, metrics=AGGREGATED_METRICS) -> pd.DataFrame:
    """One row per (dataset, category, model) of the plotted rows (``prepare_results``), in display order.

    Columns: dataset, category, category_type, label, model, ``n_seeds`` (rows averaged),
    then per metric ``<metric>`` (mean over seeds), ``<metric>_sd`` (sample sd, ddof=1:
    NaN with one seed) and ``<metric>_n`` (the seeds with a value: what the mean is over).
    NaN values are skipped (a seed where the metric is undefined, or a cell that is not a
    number); a metric the table lacks (``f1_floor`` in an older CSV) comes out NaN.
    """
    d = prepare_results(df)
    keys = ["dataset", "category", "category_type", "label", "model"]
    values = d.reindex(columns=list(metrics)).apply(pd.to_numeric, errors="coerce")
    grouped = values.groupby([d[k] for k in keys], sort=False)
    means, sds, counts = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = pd.DataFrame({"n_seeds": grouped.size()})
    for m in metrics:
        out[m] = means[m]
        out[f"{m}_sd"] = sds[m]
        out[f"{m}_n"] = counts[m]
    return out.reset_index()


def averaged_seeds_note(agg: pd.DataFrame, metrics=()) -> str:
    """'mean of N seeds' ('of N-M seeds' when they differ) for an aggregated table; '' with one seed.
    With ``metrics``, N counts the seeds that have a value of them (``<metric>_n``), so a seed
    whose cell is missing is not counted as averaged; cells without any value (n/a) are not counted."""
    counts = agg[[f"{m}_n" for m in metrics]].to_numpy().ravel() if metrics else agg["n_seeds"].to_numpy()
    counts = counts[counts > 0]
    if counts.size == 0 or counts.max() <= 1:
        return ""
    low, high = int(counts.min()), int(counts.max())
    return f"mean of {low} seeds" if low == high else f"mean of {low}–{high} seeds"


def ordered_categories(d: pd.DataFrame) -> list[tuple[str, str]]:
    """Ordered (label, category_type) pairs."""
    return list(dict.fromkeys(zip(d["label"], d["category_type"])))


def ordered_models(d: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(d["model"]))


def dataset_note(d: pd.DataFrame) -> str:
    """'dataset: <names>' of a prepared results table, for titles and the report summary."""
    return "dataset: " + ", ".join(sorted(d["dataset"].astype(str).unique()))


def category_table(rows: pd.DataFrame, column: str, names, cats=None) -> pd.DataFrame:
    """Category label x model name table of ``column`` (one row per (label, model) in ``rows``):
    its columns ``names``, its rows the labels of ``cats`` in that order (default: every label
    of ``rows``, sorted)."""
    table = rows.pivot(index="label", columns="model", values=column)
    return table.reindex(index=None if cats is None else [lab for lab, _ in cats], columns=names).astype(float)


def comparable(table: pd.DataFrame) -> pd.Series:
    """The rows (categories) of a category x model table where every model has a value: a mean
    that ranks models is over these only, or a model whose job failed on a hard category would
    rank above one that is better on every category both have."""
    return table.notna().all(axis=1)


def missing_values_note(table: pd.DataFrame, means: str = "Mean rows") -> str:
    """The footnote of a category x model table's ``means``: which categories they leave out
    because some model has no value there (a failed job, a cell that is not a number); '' if none.
    Categories where no model has a value (e.g. no defective test images) leave out every model
    alike, so they need no word."""
    partial = table[~comparable(table) & table.notna().any(axis=1)]
    if partial.empty:
        return ""
    where = [f"{category} (no value for {', '.join(model_label(m) for m in row.index[row.isna()])})"
             for category, row in partial.iterrows()]
    more = f" and {len(where) - 4} more" if len(where) > 4 else ""
    return (f"{means}: over the categories where every model has a value; left out: "
            + ", ".join(where[:4]) + more + ".")


def means_note(table: pd.DataFrame) -> str:
    """The footnote of a ``results_table`` (``missing_values_note`` of its categories); '' if none."""
    return table.attrs.get(MEANS_NOTE_ATTR, "")


def combine_notes(notes: dict[str, str]) -> str:
    """One footnote from several tables' notes (label -> note): said once when they agree, else one line each."""
    distinct = list(dict.fromkeys(n for n in notes.values() if n))
    if len(distinct) <= 1:
        return distinct[0] if distinct else ""
    return "\n".join(f"{label}: {note}" for label, note in notes.items() if note)


def _type_means(table: pd.DataFrame, cats, shared: pd.Series) -> pd.DataFrame:
    """The rows "texture mean" and "object mean" (when both kinds are present) and "overall
    mean" of a category x model table: means over its ``shared`` categories (``comparable``:
    where every model has a value), so every model's mean covers the same ones."""
    types = pd.Series([t for _, t in cats], index=table.index)
    shared = shared.reindex(table.index, fill_value=False)
    rows = []
    for t in ("texture", "object"):
        if (types == t).any() and (types != t).any():
            rows.append(table[((types == t) & shared).to_numpy()].mean().to_frame(f"{t} mean").T)
    rows.append(table[shared.to_numpy()].mean().to_frame("overall mean").T)
    return pd.concat(rows)


def results_table(df: pd.DataFrame, metric: str = "image_auroc", stat: str = "mean") -> pd.DataFrame:
    """Category x model table of ``metric`` over seeds, with texture / object / overall mean rows.

    ``stat="mean"``: each cell the mean over seeds (``aggregate_seeds``), each mean row the
    mean of the cells above it over the categories where every model has a value
    (``comparable``): means that rank models cover the same categories; the ones left out
    are named in ``means_note(table)``. ``stat="sd"``: each cell the sd over seeds (ddof=1,
    NaN with one seed), each mean row the sd over seeds of that seed's mean over the same
    categories, i.e. how much the mean row itself moves with the seed. Index: the categories
    (ordered textures, objects, custom), then "texture mean" and "object mean" when both
    types are present, then "overall mean". Columns: display names of the models.
    """
    if stat not in ("mean", "sd"):
        raise ValueError(f"stat must be 'mean' or 'sd', not {stat!r}")
    d = prepare_results(df)
    agg = aggregate_seeds(d, metrics=(metric,))
    cats, names = ordered_categories(d), ordered_models(d)
    mean_table = category_table(agg, metric, names, cats)
    shared = comparable(mean_table)
    if stat == "mean":
        table = mean_table
        means = _type_means(table, cats, shared)
    else:
        table = category_table(agg, f"{metric}_sd", names, cats)
        d[metric] = pd.to_numeric(d[metric], errors="coerce")
        per_seed = [_type_means(category_table(rows, metric, names, cats), cats, shared)
                    for _, rows in d.groupby("seed", sort=True, dropna=False)]
        means = pd.concat(per_seed).groupby(level=0, sort=False).std(ddof=1)
    out = pd.concat([table, means])
    out.attrs[MEANS_NOTE_ATTR] = missing_values_note(mean_table)
    out.columns = [model_label(m) for m in out.columns]
    out.index.name = "category"
    name = METRIC_LABELS.get(metric, metric)
    out.columns.name = name if stat == "mean" else f"{name}, sd over seeds"
    return out

