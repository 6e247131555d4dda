"""A trained job, found again: its results row, its model rebuilt from its checkpoint, and how it scores.

``predict`` and ``export`` use a model as the row that reports it was evaluated: the row's
scoring rule, threshold, input size and channels, and the weights its training saved. A job is
named by its row (``load_trained``: results CSV, category, model, optionally seed, dataset or
config hash) or by a checkpoint file alone (``load_from_checkpoint``: the row its training stored
in it). The configs are rebuilt from the row's ``config_json`` by the classes that own them
(``models.model_config``, ``EvalConfig.from_dict``), so a field added to a config later needs
nothing here. What does not fit is one sentence: no such row, several seeds without ``--seed``,
a missing checkpoint (where it was looked for, and how to get it), a checkpoint of another
package, model, config or training (``train_hash``), a row edited by hand.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from models import AnomalyModel, ImageSize, model_config
from models.errors import CheckpointError, ConfigError
from models.mvtec import DECODE_VERSION

from .checkpoints import DEFAULT_CHECKPOINT_DIR, checkpoint_path, load_checkpoint, read_checkpoint
from .evaluate import EvalConfig
from .job import config_hash
from .results import DEFAULT_RESULTS_CSV, ResultsError, read_results
from .train import resolve_device

DEFAULT_BATCH_SIZE = 32  # inference batch when the row names none (a row of an older version)


@dataclass(frozen=True, kw_only=True)
class TrainedJob:
    """A trained model as its row reports it: rebuilt in eval mode, with the row's scoring rule
    and threshold ("defective" iff score > threshold, as the row's F1 counts it)."""

    model: AnomalyModel  # eval mode, on ``device``
    name: str  # the registry name: cae, vae, ...
    dataset: str
    category: str
    seed: int | None
    threshold: float  # NaN when the row has none (no val images)
    eval_config: EvalConfig  # the row's scoring rule (``eval_config.score``), evaluation size, threshold rule
    train_hash: str
    config_hash: str
    checkpoint: Path
    batch_size: int  # the row's evaluation batch: predicting in it gives the row's scores exactly
    amp: bool  # bf16 autocast on CUDA, as the row's evaluation ran
    config: dict = field(repr=False)  # the row's whole config (config_json): training and evaluation
    row: dict = field(repr=False)  # the results row

    @property
    def image_size(self) -> ImageSize:
        return self.model.config.image_size

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    def describe(self) -> str:
        """'cae on 'widget' (seed 0, dataset demo)'."""
        seed = "" if self.seed is None else f"seed {self.seed}, "
        return f"{self.name} on {self.category!r} ({seed}dataset {self.dataset})"


# ------------------------------------------------------------------ which row


def _seed(value) -> int | None:
    seed = pd.to_numeric(value, errors="coerce")
    return int(seed) if pd.notna(seed) else None


def _pairs(df: pd.DataFrame) -> str:
    """'widget/cae, widget/vae and 3 more': what a CSV holds, for a message about a row it lacks."""
    pairs = list(dict.fromkeys(f"{c}/{m}" for c, m in zip(df["category"].astype(str), df["model"].astype(str))))
    more = f" and {len(pairs) - 6} more" if len(pairs) > 6 else ""
    return ", ".join(pairs[:6]) + more if pairs else "no rows"


def select_row(df: pd.DataFrame, *, category: str, model: str, seed: int | None = None, dataset: str | None = None,
               config_hash: str | None = None, where: str = "the results CSV") -> pd.Series:
    """The row of (category, model) in ``df`` (``read_results``), narrowed by ``dataset``, ``seed``
    and ``config_hash`` (a prefix is enough). Refused in one sentence: no such row, rows of
    several datasets or seeds with none chosen. Of several configs of one seed (a rerun with
    another scoring rule or threshold rule), the latest finished is taken, with a note, as the
    tables take it (``tables.prepare_results``)."""
    rows = df[(df["category"].astype(str) == str(category)) & (df["model"].astype(str) == str(model))]
    if rows.empty:
        raise ConfigError(f"{where} has no row of {model} on {category!r} (it holds {_pairs(df)}); train it first "
                          f"with `python -m pipeline run --categories {category} --models {model}`, or pass the "
                          "--results-csv that has it.")
    what = f"{model} on {category!r}"
    rows = _narrow(rows, "dataset", dataset, what=what, where=where, option="--dataset")
    if config_hash:
        chosen = rows[rows["config_hash"].astype(str).str.startswith(str(config_hash))]
        if chosen.empty:
            raise ConfigError(f"{where} has no row of {what} with config_hash {config_hash!r}; its rows have "
                              f"{', '.join(rows['config_hash'].astype(str))}.")
        rows = chosen
    seeds = sorted({s for s in map(_seed, rows["seed"]) if s is not None})
    if seed is not None:
        rows = rows[[_seed(s) == seed for s in rows["seed"]]]
        if rows.empty:
            raise ConfigError(f"{where} has no row of {what} with seed {seed}; its seeds are "
                              f"{', '.join(map(str, seeds))}: pass one of them with --seed.")
    elif len(seeds) > 1:
        raise ConfigError(f"{where} has rows of {what} for seeds {', '.join(map(str, seeds))}; pass one of them "
                          "with --seed.")
    return _latest(rows, what=what, where=where)


def _narrow(rows: pd.DataFrame, column: str, value, *, what: str, where: str, option: str) -> pd.DataFrame:
    """``rows`` of ``column`` == ``value``; with no value, refused if the rows hold several."""
    found = sorted(set(rows[column].astype(str)))
    if value is None:
        if len(found) > 1:
            raise ConfigError(f"{where} has rows of {what} in several {column}s ({', '.join(found)}); pass one "
                              f"of them with {option}.")
        return rows
    chosen = rows[rows[column].astype(str) == str(value)]
    if chosen.empty:
        raise ConfigError(f"{where} has no row of {what} in {column} {value!r}; it has {', '.join(found)}.")
    return chosen


def _latest(rows: pd.DataFrame, *, what: str, where: str) -> pd.Series:
    """The most recently finished of ``rows``; a note names the others when there are several."""
    if "finished_at" in rows.columns:
        rows = rows.sort_values("finished_at", kind="stable", na_position="first")
    row = rows.iloc[-1]
    if len(rows) > 1:
        others = ", ".join(rows["config_hash"].astype(str).iloc[:-1])
        warnings.warn(f"{where} has {len(rows)} rows of {what} (seed {_seed(row['seed'])}) of different configs; "
                      f"using the latest, config_hash {row['config_hash']} (score {row.get('score')}, threshold "
                      f"rule {row.get('threshold_rule')}): pass --config-hash to choose another ({others}).",
                      stacklevel=3)
    return row


# ------------------------------------------------------------------ the model of a row


def row_config(row: Mapping, where: str) -> dict:
    """The row's config (its ``config_json``), checked against its ``config_hash``: a config edited
    by hand would score with a rule, or rebuild a model, that the row's numbers do not come from."""
    text = row.get("config_json")
    if not isinstance(text, str) or not text.strip():
        raise ResultsError(f"{where} has no config_json (written by an older version); run that job again with "
                           "`python -m pipeline run ... --force` to write a row this version can use.")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ResultsError(f"{where} has a config_json that is not JSON ({e}); restore the CSV from a copy or run "
                           "that job again with --force.") from None
    if not isinstance(config, dict) or config_hash(config) != str(row.get("config_hash")):
        raise ResultsError(f"{where}: its config_json does not hash to its config_hash {row.get('config_hash')} "
                           "(edited by hand?); restore the CSV from a copy or run that job again with --force.")
    return config


def _configs(name: str, config: dict, where: str):
    """The model's config and the evaluation config, rebuilt by their own classes."""
    try:
        return model_config(name, **config["model_config"]), EvalConfig.from_dict(config["eval"])
    except (KeyError, TypeError) as e:
        raise ResultsError(f"{where} has a config of another version (no setting {e}); use this package's "
                           "version that wrote it, or run that job again with --force.") from None


def _check_training(model: AnomalyModel, path: Path, train_hash: str) -> None:
    """The checkpoint must hold the training the row names: a file copied or renamed over another
    training's (same model and config, other data or seed) has the same shape and loads."""
    stored = (model.checkpoint.get("row") or {}).get("train_hash")
    if stored is not None and str(stored) != str(train_hash):
        raise CheckpointError(f"{str(path)!r} holds the model of another training (train_hash {stored}), not the "
                              f"one the row names ({train_hash}); it was copied or renamed over it: delete it and "
                              "run that job again with --force to retrain it.")


def job_from_row(row: Mapping, *, checkpoint: Path | None = None, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
                 device="cpu", where: str = "the row") -> TrainedJob:
    """The ``TrainedJob`` of a results row: its model loaded from ``checkpoint`` (default: where the
    grid keeps it under ``checkpoint_dir``, ``checkpoints.checkpoint_path``), in eval mode on ``device``."""
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dict(row).items()}
    name, dataset, category = str(row["model"]), str(row["dataset"]), str(row["category"])
    config = row_config(row, where)
    model_cfg, eval_config = _configs(name, config, where)
    if config.get("decode_version") != DECODE_VERSION:
        warnings.warn(f"{where} was trained on images decoded by rule {config.get('decode_version')}, and this "
                      f"version decodes by rule {DECODE_VERSION} (models/mvtec/decode.py): new images are read a "
                      "little differently from the training images; retrain (--force) for exact scores.", stacklevel=2)
    train_hash = str(row["train_hash"])
    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(
        checkpoint_dir, dataset=dataset, category=category, model=name, train_hash=train_hash)
    if not path.is_file():
        seed = _seed(row.get("seed"))
        again = f"python -m pipeline run --categories {category} --models {name}" + (
            f" --seed {seed}" if seed is not None else "")
        raise CheckpointError(
            f"the trained model of {where} is not at {str(path)!r} (its checkpoint, {path.name}); pass "
            f"--checkpoint-dir where it is kept, or train it again with `{again} --force` and that row's "
            "other settings.")
    model = load_checkpoint(path, model=name, config=model_cfg, device=resolve_device(device))
    _check_training(model, path, train_hash)
    threshold = pd.to_numeric(row.get("threshold"), errors="coerce")
    batch = pd.to_numeric(row.get("batch_size"), errors="coerce")
    return TrainedJob(
        model=model, name=name, dataset=dataset, category=category, seed=_seed(row.get("seed")),
        threshold=float(threshold) if pd.notna(threshold) else math.nan, eval_config=eval_config,
        train_hash=train_hash, config_hash=str(row["config_hash"]), checkpoint=path,
        batch_size=int(batch) if pd.notna(batch) and batch >= 1 else DEFAULT_BATCH_SIZE,
        amp=bool(config.get("train", {}).get("amp", True)), config=config, row=row)


def load_trained(results_csv=DEFAULT_RESULTS_CSV, *, category: str, model: str, seed: int | None = None,
                 dataset: str | None = None, config_hash: str | None = None,
                 checkpoint_dir=DEFAULT_CHECKPOINT_DIR, device="cpu") -> TrainedJob:
    """The trained job of the row of (category, model[, seed, dataset, config_hash]) in ``results_csv``
    (``select_row``), its model from the checkpoint its training saved under ``checkpoint_dir``."""
    df = read_results(results_csv)
    where = f"results file {str(results_csv)!r}"
    row = select_row(df, category=category, model=model, seed=seed, dataset=dataset, config_hash=config_hash,
                     where=where)
    seed_text = f" (seed {_seed(row['seed'])})" if _seed(row["seed"]) is not None else ""
    return job_from_row(row, checkpoint_dir=checkpoint_dir, device=device,
                        where=f"the row of {model} on {category!r}{seed_text} in {str(results_csv)!r}")


def load_from_checkpoint(path, *, device="cpu") -> TrainedJob:
    """The trained job of a checkpoint file alone: the row its training stored in it (the threshold
    and scoring rule of that evaluation), checked against the weights as ``job_from_row`` does."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path, or name the job by its "
                              "row instead (--results-csv, --category, --model).")
    stored = read_checkpoint(path).get("row")  # plain data only; job_from_row loads the weights against it
    if not isinstance(stored, dict) or not stored.get("config_json"):
        raise CheckpointError(f"{str(path)!r} holds no results row (threshold, scoring rule), so it cannot score "
                              "new images as a row does; name the job by its row instead (--results-csv, "
                              "--category, --model).")
    return job_from_row(stored, checkpoint=path, device=device, where=f"the row stored in {str(path)!r}")


# ------------------------------------------------------------------ the command line's options


def add_job_arguments(parser) -> None:
    """The options that name a trained job, shared by ``predict`` and ``export``."""
    parser.add_argument("--results-csv", default=DEFAULT_RESULTS_CSV, metavar="FILE",
                        help=f"the results table with the job's row (default {DEFAULT_RESULTS_CSV})")
    parser.add_argument("--category", metavar="C", help="the row's category")
    parser.add_argument("--model", metavar="M", help="the row's model (cae, vae, vit_vae, vae_grf)")
    parser.add_argument("--seed", type=int, metavar="K", help="the row's seed (needed when the CSV has several)")
    parser.add_argument("--dataset", metavar="D", help="the row's dataset (needed when the CSV has several)")
    parser.add_argument("--config-hash", metavar="H",
                        help="the row's config_hash or its first digits (default: the latest row of that seed)")
    parser.add_argument("--checkpoint-dir", default=DEFAULT_CHECKPOINT_DIR, metavar="DIR",
                        help=f"where the run kept the checkpoints (default {DEFAULT_CHECKPOINT_DIR}/)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a checkpoint file instead of a row: the row its training stored in it is used")


def trained_from_args(args, *, device="cpu") -> TrainedJob:
    """The ``TrainedJob`` the options of ``add_job_arguments`` name; ConfigError if they name none or two."""
    if args.checkpoint:
        if args.category or args.model:
            raise ConfigError("pass either --checkpoint, or --category and --model (a row of --results-csv), "
                              "not both.")
        return load_from_checkpoint(args.checkpoint, device=device)
    if not (args.category and args.model):
        raise ConfigError("name the trained job: --category C and --model M (its row in --results-csv), or "
                          "--checkpoint PATH.")
    return load_trained(args.results_csv, category=args.category, model=args.model, seed=args.seed,
                        dataset=args.dataset, config_hash=args.config_hash, checkpoint_dir=args.checkpoint_dir,
                        device=device)
