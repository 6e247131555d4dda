"""The grid: every (category, seed, model) job of a run, skipping those already in the results CSV.

``make_specs`` builds and validates the jobs (every parameter error before any image is
decoded) and fingerprints each category's files; ``run_grid`` runs those whose key is not
yet in the CSV, category-major so that a category is decoded once for all its models. A job
whose trained model is already recorded (a row with its ``train_hash`` in the CSV, and its
checkpoint on disk) is only re-evaluated, from the checkpoint: a new scoring rule,
evaluation size or threshold never retrains. Each row is appended as soon as its job ends
(``results.append_row``), its checkpoint and side files (``runs.py``) written just before it
under the CSV's lock, only if the row is kept; a failing job is reported in one line and the
grid goes on.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd

from models import (
    DEFAULT_IMAGE_SIZE,
    MODEL_NAMES,
    ImageSize,
    canonical_size,
    list_categories,
    model_config,
    size_label,
    size_multiple,
)
from models.errors import CheckpointError, ConfigError, DatasetError, UserError
from models.mvtec import DEFAULT_VAL_FRACTION, MASK_VERSION, category_type, dataset_name

from . import memory, runs
from .checkpoints import DEFAULT_CHECKPOINT_DIR, make_checkpoint_dir
from .evaluate import EvalConfig
from .files import make_folder, shown_name, undecodable_names
from .fingerprint import data_fingerprint, describe_change
from .job import (
    HASH_VERSION,
    CategoryData,
    JobOutput,
    JobSpec,
    check_test_split,
    compute_from_checkpoint,
    compute_job,
    load_category,
    write_output,
)
from .results import (
    DEFAULT_RESULTS_CSV,
    KEY_COLUMNS,
    ResultsError,
    append_row,
    check_writable,
    open_results,
    read_results,
)
from .sizes import DEFAULT_ASPECT, category_size, check_aspect
from .train import TrainConfig


def make_specs(data_root, categories=None, models=None, *, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
               aspect: str = DEFAULT_ASPECT, train: TrainConfig | None = None, seeds=None,
               model_overrides: dict | None = None, eval_config: EvalConfig | None = None,
               val_fraction: float = DEFAULT_VAL_FRACTION) -> list[JobSpec]:
    """The grid's jobs, category-major, then seed, then model (a category is decoded once for
    all its models), validated, with each category's data fingerprint. ``seeds`` (default:
    ``train.seed`` alone) gives one job per seed. Each category's input size is
    ``sizes.category_size``: ``image_size`` as given (``aspect="fixed"``) or with the short side
    ``image_size`` and the images' aspect (``aspect="keep"``), the same for all its models."""
    image_size = canonical_size(image_size)
    check_aspect(aspect, image_size)
    available = list_categories(data_root)  # DatasetError for a missing or empty root
    cats = available if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in cats if c not in available]
    if unknown:
        raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                           f"in {str(data_root)!r}; valid: {', '.join(available)}.")
    names = list(MODEL_NAMES) if models is None else list(dict.fromkeys(models))
    overrides = dict(model_overrides or {})
    for name in [*names, *(m for m in overrides if m not in names)]:
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
        if not isinstance(overrides.get(name, {}), dict):
            raise ConfigError(f"the overrides of {name} must be a dict of its settings (e.g. {{{name!r}: "
                              f"{{'latent_dim': 64}}}}), got {overrides[name]!r}.")
        for key in ("image_size", "in_channels"):
            if key in overrides.get(name, {}):
                raise ConfigError(f"{name}.{key} cannot be overridden per model; the grid sets {key} for all models "
                                  f"(--image-size on the command line).")
        # Every setting and the (short) side, before any file is opened; a model that is not run
        # too: a typo in its --set is still a mistake, said rather than ignored.
        model_config(name, image_size=image_size, **overrides.get(name, {}))
    train = train or TrainConfig()
    seeds = [train.seed] if seeds is None else list(dict.fromkeys(seeds))
    if not seeds:
        raise ConfigError("no seeds given; pass at least one (e.g. --seeds 0 1 2).")
    eval_config = eval_config or EvalConfig()
    dataset = dataset_name(data_root)
    # Names from bytes that are not UTF-8 cannot go into the CSV: said now, not after training.
    bad = [f"the category folder '{c}' in '{shown_name(data_root)}'" for c in undecodable_names(cats)]
    if undecodable_names([dataset]):
        bad.append(f"the data root folder '{shown_name(Path(data_root).resolve())}', which names the dataset,")
    if bad:
        raise DatasetError(f"{bad[0]} has a name that is not UTF-8 text (as a zip made on Windows may unpack it), "
                           "which the results cannot hold; rename that folder.")
    step = size_multiple(names, overrides)  # one H x W fits every model of the grid
    sizes = {c: category_size(data_root, c, image_size, aspect=aspect, step=step) for c in cats}
    rectangles = [c for c in cats if not isinstance(sizes[c], int)]
    if train.augment == "dihedral" and rectangles:
        warnings.warn(f"dihedral augmentation adds quarter turns, which a rectangle does not have: the inputs of "
                      f"{', '.join(map(repr, rectangles))} (e.g. {size_label(sizes[rectangles[0]])} px) are augmented "
                      "by flips only, their 4 symmetries (as augment=flip).", stacklevel=2)
    specs = [JobSpec(data_root=data_root, category=c, model=m, dataset=dataset, image_size=sizes[c],
                     train=dataclasses.replace(train, seed=seed), model_overrides=dict(overrides.get(m, {})),
                     eval_config=eval_config, val_fraction=val_fraction)
             for c in cats for seed in seeds for m in names]
    for s in specs:
        s.validate()
    digests = {c: data_fingerprint(data_root, c).digest for c in cats}  # after validation: hashing reads files
    return [dataclasses.replace(s, data_fingerprint=digests[s.category]) for s in specs]


EXECUTORS = ("local", "ray")


def check_executor(executor: str, *, gpus_per_job: float | None, cpus_per_job: float,
                   max_concurrent_jobs: int | None) -> None:
    """The executor options, checked before any data is read."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}.")
    if gpus_per_job is not None and not (isinstance(gpus_per_job, (int, float)) and gpus_per_job >= 0):
        raise ConfigError(f"--gpus-per-job must be a number >= 0 (fractions share a GPU), got {gpus_per_job!r}.")
    if not (isinstance(cpus_per_job, (int, float)) and cpus_per_job > 0):
        raise ConfigError(f"--cpus-per-job must be a number > 0, got {cpus_per_job!r}.")
    if max_concurrent_jobs is not None and not (isinstance(max_concurrent_jobs, int) and max_concurrent_jobs >= 1):
        raise ConfigError(f"--max-concurrent-jobs must be a whole number >= 1, got {max_concurrent_jobs!r}.")


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _version(config_json: str, key: str = "hash_version") -> int | None:
    try:
        return json.loads(config_json).get(key)
    except (TypeError, ValueError, AttributeError):
        return None


def explain_reruns(table: pd.DataFrame, specs: list[JobSpec], runs_folder: Path, log) -> None:
    """Say once why jobs that look done run again: rows of an older version (other keys), rows
    evaluated with masks read by an older rule, a category whose rows are under another dataset
    name, or a category whose files changed since its rows were written (naming how many files
    differ)."""
    if table.empty or not specs:
        return
    explain_renamed(table, specs, log)
    ours = {(s.dataset, s.category, s.model) for s in specs}
    same_job = pd.Series([(d, c, m) in ours for d, c, m in zip(table["dataset"], table["category"], table["model"])],
                         index=table.index)
    versions = table["config_json"].map(_version) if "config_json" in table else pd.Series(None, index=table.index)
    old = table[same_job & (versions != HASH_VERSION)]
    if len(old):
        log(f"{len(old)} row(s) of these jobs were written by an older version, whose keys did not include the "
            "data's fingerprint and the evaluation settings; the jobs run again under the new keys (the old rows "
            "are kept).")
    if "data_fingerprint" not in table or "config_json" not in table:
        return
    current = table[same_job & (versions == HASH_VERSION)]
    mask_versions = current["config_json"].map(lambda text: _version(text, "mask_version"))
    if len(older_masks := current[mask_versions != MASK_VERSION]):
        log(f"{len(older_masks)} row(s) of these jobs were evaluated with masks read by an older rule (a colour "
            "mask read as grey, which lost dark colours and class indices; now any non-zero value of any channel is "
            "a defect); they are evaluated again, from their checkpoints where those are kept (the old rows are "
            "kept).")
    for spec in {s.category: s for s in specs}.values():
        rows = current[(current["dataset"] == spec.dataset) & (current["category"] == spec.category)]
        stale = rows[rows["data_fingerprint"] != spec.data_fingerprint]
        if stale.empty:
            continue
        before = stale.sort_values("finished_at")["data_fingerprint"].iloc[-1]
        old_files = runs.load_manifest(runs.manifest_path(runs_folder, dataset=spec.dataset, category=spec.category,
                                                          fingerprint=before))
        if old_files is None:
            log(f"data of {spec.category!r} changed since its rows were written (fingerprint {before} -> "
                f"{spec.data_fingerprint}); its jobs run again.")
        else:
            change = describe_change(spec.category, old_files, data_fingerprint(spec.data_root, spec.category).files)
            log(f"{change.rstrip('.')}; its jobs run again.")


def explain_renamed(table: pd.DataFrame, specs: list[JobSpec], log) -> None:
    """Say when a category's files are in the CSV under another dataset name only: the rows of an
    earlier version, which named a root of MVTec AD's category names ``mvtec_ad`` whatever its
    folder, or of the same folder renamed; its jobs run again under the new name."""
    if "data_fingerprint" not in table:
        return
    for spec in {s.category: s for s in specs}.values():
        same_data = table[(table["category"] == spec.category) & (table["data_fingerprint"] == spec.data_fingerprint)]
        others = sorted(set(same_data["dataset"]) - {spec.dataset})
        if others and not (same_data["dataset"] == spec.dataset).any():
            log(f"the rows of {spec.category!r} with these files are in the CSV under the dataset name "
                f"{others[0]!r}, but this data root is named {spec.dataset!r} (a dataset is named after its folder, "
                "or its DATASET.json, never after which categories it holds); its jobs run again under the new name "
                "(the old rows are kept).")


def run_grid(data_root, categories=None, models=None, *, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
             aspect: str = DEFAULT_ASPECT, train: TrainConfig | None = None, seeds=None,
             model_overrides: dict | None = None, eval_config: EvalConfig | None = None,
             results_csv=DEFAULT_RESULTS_CSV, force: bool = False,
             checkpoint_dir=DEFAULT_CHECKPOINT_DIR, val_fraction: float = DEFAULT_VAL_FRACTION, cache_dir=None,
             log=print, executor: str = "local", address: str | None = None, gpus_per_job: float | None = None,
             cpus_per_job: float = 1, max_concurrent_jobs: int | None = None) -> pd.DataFrame:
    """Train (or re-evaluate) and record every (category, seed, model) whose row is not yet in ``results_csv``.

    A job whose model was trained by an earlier run (its ``train_hash`` is in the CSV and its
    checkpoint exists) is evaluated from the checkpoint without training; ``force`` retrains
    and replaces rows, and without the CSV every job trains (checkpoints never decide alone).
    Returns the grid's rows (cached and new) as a DataFrame in grid order; ``df.attrs`` holds
    ``failures`` (list of {category, model, seed, error}), ``unwritten`` (the same for rows kept
    without a file that could not be written, e.g. on a full disk), ``ran``, ``trained``,
    ``evaluated``, ``skipped`` and ``results_csv``. A failing job is reported in one line and
    the grid goes on; Ctrl-C stops it with every finished row kept.

    ``executor="ray"`` trains the jobs as Ray tasks (``executor_ray``; ``address``: None starts
    a local Ray, ``auto`` or ``ray://...`` joins a cluster; ``gpus_per_job`` None = 1 where the
    cluster has GPUs, else 0); the rows, checkpoints and side files are still written here, by
    the driver. Re-evaluations from checkpoints stay in this process (they are cheap).
    """
    check_executor(executor, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                   max_concurrent_jobs=max_concurrent_jobs)
    specs = make_specs(data_root, categories, models, image_size=image_size, aspect=aspect, train=train, seeds=seeds,
                       model_overrides=model_overrides, eval_config=eval_config, val_fraction=val_fraction)
    for spec in {s.category: s for s in specs}.values():
        if spec.image_size != canonical_size(image_size):  # chosen from the images (aspect="keep")
            log(f"{spec.category}: input {size_label(spec.image_size)} px (height x width), the aspect of its images.")
    csv, table = open_results(results_csv)  # the rows already there, read once
    runs_folder = runs.runs_dir(csv)
    done = set(map(tuple, table[list(KEY_COLUMNS)].itertuples(index=False, name=None)))
    keys = [s.key() for s in specs]
    todo = [s for s, k in zip(specs, keys) if force or k not in done]
    trained = set(zip(table["model"], table["train_hash"])) if "train_hash" in table else set()
    from_checkpoint = {id(s) for s in todo
                       if not force and checkpoint_dir is not None and (s.model, s.train_hash()) in trained
                       and s.checkpoint_path(checkpoint_dir).is_file()}
    n_eval = len(from_checkpoint)
    to_train = [s for s in todo if id(s) not in from_checkpoint]
    memory.check_jobs(to_train)  # too large to train: exit 2 before any data
    memory.check_evaluation(todo)  # an --eval-size whose pixel metrics cannot fit: the same
    log(f"{len(specs)} job(s): {len(specs) - len(todo)} already in {csv}, {len(todo) - n_eval} to train"
        + (f", {n_eval} to evaluate from their checkpoints" if n_eval else "") + ".")
    # What each category's data was, for a later "files differ" message (written below, once checked).
    manifests = {s.category: runs.manifest_path(runs_folder, dataset=s.dataset, category=s.category,
                                                fingerprint=s.data_fingerprint) for s in todo}
    if todo:  # something will be written: every folder it goes to, before any training (exit 2, not N failed jobs)
        check_writable(csv)
        for path in manifests.values():
            make_folder(path.parent, what="side-file folder", fix="pass another --results-csv", error=ResultsError)
    if todo and checkpoint_dir is not None:
        make_checkpoint_dir(checkpoint_dir)
        for spec in {s.category: s for s in to_train}.values():
            make_checkpoint_dir(spec.checkpoint_path(checkpoint_dir).parent)
    if todo and cache_dir is not None:  # the same for --cache-dir, which models.mvtec only writes after decoding
        make_folder(cache_dir, what="image cache folder", fix="pass another --cache-dir, or none", error=ConfigError)
    if not force:
        explain_reruns(table, todo, runs_folder, log)
    for category, path in manifests.items():
        if not path.is_file():
            runs.save_manifest(path, data_fingerprint(data_root, category).files)

    failures: list[dict] = []
    unwritten: list[dict] = []
    n_trained = 0
    n_done = 0
    many_seeds = len({x.train.seed for x in specs}) > 1

    def where(spec: JobSpec, i: int) -> str:
        seed = f" (seed {spec.train.seed})" if many_seeds else ""
        return f"[{i}/{len(todo)}] {spec.model} on {spec.category}{seed}"

    def fail(spec: JobSpec, at: str, e: BaseException, tb: str | None) -> None:
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        failure = {"category": spec.category, "model": spec.model, "seed": spec.train.seed, "error": error}
        if tb is not None:
            failure["traceback"] = tb
        failures.append(failure)
        log(f"{at}: FAILED: {error}")

    def finish(spec: JobSpec, at: str, data: CategoryData, output: JobOutput, took: str) -> None:
        """Append the job's row; its checkpoint and side files are written under the CSV's lock
        once the row is known to be kept (another run of the same job may have written its row
        meanwhile: its files then stay as they are, matching that row)."""
        errors: list[str] = []

        def write_files() -> None:
            errors.extend(write_output(spec, data, output, checkpoint_dir=checkpoint_dir, runs_dir=runs_folder))

        row = output.row
        kept = append_row(csv, row, replace=force, write_files=write_files)
        note = "" if kept else " (another run wrote this row meanwhile; kept theirs)"
        log(f"{at}: image AUROC {_fmt(row['image_auroc'])}, pixel AUROC {_fmt(row['pixel_auroc'])}, "
            f"AU-PRO {_fmt(row['aupro'])}, F1 {_fmt(row['f1'])} (floor {_fmt(row['f1_floor'])}), {took}{note}")
        for error in errors:
            log(f"{at}: {error}")
            unwritten.append({"category": spec.category, "model": spec.model, "seed": spec.train.seed,
                              "error": error})

    def trained_in(output: JobOutput) -> str:
        return f"trained in {float(output.row['train_seconds']):.1f} s"

    def load(spec: JobSpec) -> CategoryData:
        data = load_category(data_root, spec.category, image_size=spec.image_size, in_channels=spec.in_channels,
                             seed=spec.train.seed, val_fraction=spec.val_fraction, cache_dir=cache_dir)
        check_test_split(spec, data)
        return data

    local = todo if executor == "local" else [s for s in todo if id(s) in from_checkpoint]
    remote = [] if executor == "local" else to_train
    # Ray first: an unreachable --address fails before any image is decoded.
    if remote:
        from .executor_ray import run_jobs_on_ray  # only here: the local executor never imports Ray

        def on_output(spec: JobSpec, data: CategoryData, output: JobOutput) -> None:
            nonlocal n_done, n_trained
            n_done += 1
            n_trained += 1
            finish(spec, where(spec, n_done), data, output, trained_in(output))

        def on_failure(spec: JobSpec, e: BaseException, tb: str | None) -> None:
            nonlocal n_done
            n_done += 1
            fail(spec, where(spec, n_done), e, tb)

        log(f"sending {len(remote)} job(s) to Ray ...")
        run_jobs_on_ray(remote, load, address=address, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                        max_concurrent=max_concurrent_jobs,
                        category_kind=lambda s: category_type(s.data_root, s.category),
                        on_output=on_output, on_failure=on_failure, progress=train.progress if train else True)

    data, data_key, data_error = None, None, None
    for spec in local:
        n_done += 1
        at = where(spec, n_done)
        try:
            if data_key != (spec.category, spec.train.seed):  # release the previous data before loading the next
                data, data_error = None, None
                gc.collect()
                data_key = (spec.category, spec.train.seed)
                try:
                    data = load(spec)
                except UserError as e:
                    data_error = str(e)
            if data_error is not None:
                raise DatasetError(data_error)
            output = None
            if id(spec) in from_checkpoint:
                path = spec.checkpoint_path(checkpoint_dir)
                log(f"{at}: evaluating from checkpoint {path} ...")
                start = time.perf_counter()
                try:
                    output = compute_from_checkpoint(spec, data, checkpoint_dir=checkpoint_dir)
                    took = f"re-evaluated from checkpoint in {time.perf_counter() - start:.1f} s"
                except CheckpointError as e:
                    log(f"{at}: cannot use its checkpoint ({e}); training instead.")
            if output is None:
                log(f"{at} ...")
                output = compute_job(spec, data)
                took = trained_in(output)
                n_trained += 1
        except UserError as e:
            fail(spec, at, e, None)
            continue
        except Exception as e:  # a bug: report it in one line, keep the traceback text, go on
            fail(spec, at, e, traceback.format_exc())
            del e
            gc.collect()
            continue
        finish(spec, at, data, output, took)
        output = None
    data = None
    gc.collect()

    table = read_results(csv, missing_ok=True)
    index = {k: i for i, k in enumerate(keys)}
    table_keys = list(zip(*(table[c].astype(str) for c in KEY_COLUMNS)))
    mask = [k in index for k in table_keys]
    out = table.loc[mask].copy()
    out["_order"] = [index[k] for k, m in zip(table_keys, mask) if m]
    out = out.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    out.attrs.update(failures=failures, unwritten=unwritten, ran=len(todo) - len(failures), trained=n_trained,
                     evaluated=len(todo) - len(failures) - n_trained, skipped=len(specs) - len(todo),
                     results_csv=str(csv))
    return out
