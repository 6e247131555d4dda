"""The grid: every (category, model) job of a run, skipping those already in the results CSV.

``make_specs`` builds and validates the jobs (every parameter error before any data is
read); ``run_grid`` runs those whose key is not yet in the CSV, category-major so that a
category is decoded once for all its models, appends each row as soon as its job ends
(``results.append_row``), reports a failing job in one line and goes on, and returns the
grid's rows.
"""
from __future__ import annotations

import gc
import math
import traceback

import pandas as pd

from models import DEFAULT_IMAGE_SIZE, MODEL_NAMES, list_categories
from models.errors import ConfigError, DatasetError, UserError
from models.mvtec import DEFAULT_VAL_FRACTION, dataset_name

from .checkpoints import DEFAULT_CHECKPOINT_DIR, make_checkpoint_dir
from .job import JobSpec, load_category, run_job
from .metrics import DEFAULT_THRESHOLD_RULE
from .results import (
    DEFAULT_RESULTS_CSV,
    KEY_COLUMNS,
    append_row,
    check_writable,
    finished_keys,
    read_results,
)
from .train import TrainConfig


def make_specs(data_root, categories=None, models=None, *, image_size: int = DEFAULT_IMAGE_SIZE,
               train: TrainConfig | None = None, model_overrides: dict | None = None,
               threshold_rule: str = DEFAULT_THRESHOLD_RULE,
               val_fraction: float = DEFAULT_VAL_FRACTION) -> list[JobSpec]:
    """The grid's jobs, category-major (a category is decoded once for all its models), validated."""
    available = list_categories(data_root)  # DatasetError for a missing or empty root
    cats = available if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in cats if c not in available]
    if unknown:
        raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                           f"in {str(data_root)!r}; valid: {', '.join(available)}.")
    names = list(MODEL_NAMES) if models is None else list(dict.fromkeys(models))
    overrides = dict(model_overrides or {})
    for name in set(names) | set(overrides):
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
        for key in ("image_size", "in_channels"):
            if key in overrides.get(name, {}):
                raise ConfigError(f"{name}.{key} cannot be overridden per model; the grid sets {key} for all models "
                                  f"(--image-size on the command line).")
    dataset = dataset_name(data_root)
    train = train or TrainConfig()
    specs = [JobSpec(data_root=data_root, category=c, model=m, dataset=dataset, image_size=image_size, train=train,
                     model_overrides=dict(overrides.get(m, {})), threshold_rule=threshold_rule,
                     val_fraction=val_fraction)
             for c in cats for m in names]
    for s in specs:
        s.validate()
    return specs


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def run_grid(data_root, categories=None, models=None, *, image_size: int = DEFAULT_IMAGE_SIZE,
             train: TrainConfig | None = None, model_overrides: dict | None = None, results_csv=DEFAULT_RESULTS_CSV,
             force: bool = False, checkpoint_dir=DEFAULT_CHECKPOINT_DIR, threshold_rule: str = DEFAULT_THRESHOLD_RULE,
             val_fraction: float = DEFAULT_VAL_FRACTION, cache_dir=None, log=print) -> pd.DataFrame:
    """Train and evaluate every (category, model) whose row is not yet in ``results_csv``.

    Returns the grid's rows (cached and new) as a DataFrame in grid order; ``df.attrs``
    holds ``failures`` (list of {category, model, error}), ``ran`` and ``skipped``. A failing
    job is reported in one line and the grid goes on; Ctrl-C stops it with every finished
    row kept. ``model_overrides`` maps a model name to config overrides.
    """
    specs = make_specs(data_root, categories, models, image_size=image_size, train=train,
                       model_overrides=model_overrides, threshold_rule=threshold_rule, val_fraction=val_fraction)
    csv = check_writable(results_csv)
    done = finished_keys(csv)
    keys = [s.key() for s in specs]
    todo = [s for s, k in zip(specs, keys) if force or k not in done]
    log(f"{len(specs)} job(s): {len(specs) - len(todo)} already in {csv}, {len(todo)} to run.")
    if todo and checkpoint_dir is not None:
        make_checkpoint_dir(checkpoint_dir)  # before any training: a bad --checkpoint-dir is exit 2, not N failed jobs

    failures: list[dict] = []
    data, data_category, data_error = None, None, None
    for i, spec in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {spec.model} on {spec.category} ...")
        try:
            if data_category != spec.category:  # release the previous category before loading the next
                data, data_error = None, None
                gc.collect()
                data_category = spec.category
                try:
                    data = load_category(data_root, spec.category, image_size=spec.image_size,
                                         in_channels=spec.in_channels, seed=spec.train.seed,
                                         val_fraction=spec.val_fraction, cache_dir=cache_dir)
                except UserError as e:
                    data_error = str(e)
            if data_error is not None:
                raise DatasetError(data_error)
            row = run_job(spec, data, checkpoint_dir=checkpoint_dir)
        except UserError as e:
            failures.append({"category": spec.category, "model": spec.model, "error": str(e)})
            log(f"[{i}/{len(todo)}] FAILED {spec.model} on {spec.category}: {e}")
            continue
        except Exception as e:  # a bug: report it in one line, keep the traceback text, go on
            failures.append({"category": spec.category, "model": spec.model, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()})
            log(f"[{i}/{len(todo)}] FAILED {spec.model} on {spec.category}: {type(e).__name__}: {e}")
            del e
            gc.collect()
            continue
        written = append_row(csv, row, replace=force)
        note = "" if written else " (another run wrote this row meanwhile; kept theirs)"
        log(f"[{i}/{len(todo)}] {spec.model} on {spec.category}: image AUROC {_fmt(row['image_auroc'])}, "
            f"pixel AUROC {_fmt(row['pixel_auroc'])}, AU-PRO {_fmt(row['aupro'])}, F1 {_fmt(row['f1'])} "
            f"in {row['train_seconds']:.1f} s{note}")
    data = None
    gc.collect()

    table = read_results(csv, missing_ok=True)
    index = {k: i for i, k in enumerate(keys)}
    table_keys = list(zip(*(table[c].astype(str) for c in KEY_COLUMNS)))
    mask = [k in index for k in table_keys]
    out = table.loc[mask].copy()
    out["_order"] = [index[k] for k, m in zip(table_keys, mask) if m]
    out = out.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    out.attrs.update(failures=failures, ran=len(todo) - len(failures), skipped=len(specs) - len(todo))
    return out
