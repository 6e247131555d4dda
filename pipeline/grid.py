"""The grid: every (category, seed, model) job of a run, skipping those already in the results CSV.

``run_grid(config, settings)`` is four steps, each a function:

    specs = make_specs(config)        # every job, validated, with its data's fingerprint
    plan = plan_jobs(specs, settings)  # what the CSV lacks: trained, or re-evaluated from a checkpoint
    prepare(plan, settings)            # memory and folder checks, why jobs run again: before any data
    execute(plan, settings)            # the executor runs the tasks; each row is kept as its job ends
    collect(plan, recorder)            # the grid's rows, in grid order

``GridConfig`` says which jobs (data, categories, models, sizes, training and evaluation
settings); ``Settings`` where their results go and how they run (paths, executor). A job
whose trained model is already recorded (a row with its ``train_hash`` in the CSV, and its
checkpoint on disk) is only re-evaluated: a new scoring rule, evaluation size or threshold
never retrains. Each row is appended as soon as its job ends (``results.append_row``), its
checkpoint and side files written just before it under the CSV's lock, only if the row is
kept; a failing job is reported in one line and the grid goes on.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from models.errors import ConfigError, DatasetError, UserError
from models.mvtec import DEFAULT_VAL_FRACTION, category_type, dataset_name

from . import memory, runs
from .checkpoints import DEFAULT_CHECKPOINT_DIR, make_checkpoint_dir
from .evaluate import EvalConfig
from .executor_local import Task, run_jobs_locally
from .files import make_folder, shown_name, undecodable_names
from .fingerprint import data_fingerprint
from .job import CategoryData, JobOutput, JobSpec, load_category, write_output
from .reruns import explain_reruns
from .results import (
    DEFAULT_RESULTS_CSV,
    KEY_COLUMNS,
    ResultsError,
    append_row,
    check_writable,
    open_results,
    read_results,
)
from .sizes import DEFAULT_ASPECT, auto_aspect_line, category_size, check_aspect
from .train import TrainConfig

EXECUTORS = ("local", "ray")


@dataclass(kw_only=True)
class GridConfig:
    """Which jobs a run holds: every (category, seed, model) of ``data_root`` under these settings."""

    data_root: str | Path
    categories: list[str] | None = None  # None = every category of data_root
    models: list[str] | None = None  # None = every registered model
    image_size: ImageSize = DEFAULT_IMAGE_SIZE  # S or (H, W); with aspect "keep", the short side
    aspect: str = DEFAULT_ASPECT  # "fixed", "keep" or "auto" (sizes.category_size)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] | None = None  # None = train.seed alone
    model_overrides: dict = field(default_factory=dict)  # model name -> its settings
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    val_fraction: float = DEFAULT_VAL_FRACTION


@dataclass(kw_only=True)
class Settings:
    """Where a run's results go and how its jobs run (built by the command line and the notebook)."""

    results_csv: str | Path = DEFAULT_RESULTS_CSV
    checkpoint_dir: str | Path | None = DEFAULT_CHECKPOINT_DIR  # None = no checkpoints
    cache_dir: str | Path | None = None  # decoded images on disk (models.mvtec)
    force: bool = False  # retrain and replace the rows already there
    log: Callable[[str], None] = print
    executor: str = "local"  # EXECUTORS
    address: str | None = None  # Ray: None starts a local Ray, "auto" or "ray://..." joins a cluster
    gpus_per_job: float | None = None  # Ray: None = 1 where the cluster has GPUs, else 0
    cpus_per_job: float = 1
    max_concurrent_jobs: int | None = None  # Ray: jobs in flight (None: twice what the cluster runs at once)

    def check(self) -> None:
        """The executor options, checked before any data is read."""
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}; valid: {', '.join(EXECUTORS)}.")
        gpus, cpus, most = self.gpus_per_job, self.cpus_per_job, self.max_concurrent_jobs
        if gpus is not None and not (isinstance(gpus, (int, float)) and gpus >= 0):
            raise ConfigError(f"--gpus-per-job must be a number >= 0 (fractions share a GPU), got {gpus!r}.")
        if not (isinstance(cpus, (int, float)) and cpus > 0):
            raise ConfigError(f"--cpus-per-job must be a number > 0, got {cpus!r}.")
        if most is not None and not (isinstance(most, int) and most >= 1):
            raise ConfigError(f"--max-concurrent-jobs must be a whole number >= 1, got {most!r}.")


def check_names(config: GridConfig) -> tuple[list[str], list[str], dict]:
    """The run's categories, models and per-model overrides, each checked (one sentence for
    an unknown name or a bad setting) before any image file is opened."""
    available = list_categories(config.data_root)  # DatasetError for a missing or empty root
    cats = available if config.categories is None else list(dict.fromkeys(config.categories))
    unknown = [c for c in cats if c not in available]
    if unknown:
        raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                           f"in {str(config.data_root)!r}; valid: {', '.join(available)}.")
    names = list(MODEL_NAMES) if config.models is None else list(dict.fromkeys(config.models))
    overrides = dict(config.model_overrides or {})
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
        # Every setting and the (short) side; a model that is not run too: a typo in its
        # --set is still a mistake, said rather than ignored.
        model_config(name, image_size=canonical_size(config.image_size), **overrides.get(name, {}))
    # Names from bytes that are not UTF-8 cannot go into the CSV: said now, not after training.
    bad = [f"the category folder '{c}' in '{shown_name(config.data_root)}'" for c in undecodable_names(cats)]
    if undecodable_names([dataset_name(config.data_root)]):
        bad.append(f"the data root folder '{shown_name(Path(config.data_root).resolve())}', which names the dataset,")
    if bad:
        raise DatasetError(f"{bad[0]} has a name that is not UTF-8 text (as a zip made on Windows may unpack it), "
                           "which the results cannot hold; rename that folder.")
    return cats, names, overrides


def make_specs(config: GridConfig) -> list[JobSpec]:
    """The grid's jobs, category-major, then seed, then model (a category is decoded once for
    all its models), validated, with each category's data fingerprint and type. Each
    category's input size is ``sizes.category_size``: ``image_size`` as given (``aspect="fixed"``)
    or with the short side ``image_size`` and the images' aspect (``aspect="keep"``), the same
    for all its models."""
    image_size, root, train = canonical_size(config.image_size), config.data_root, config.train
    check_aspect(config.aspect, image_size)
    cats, names, overrides = check_names(config)
    seeds = [train.seed] if config.seeds is None else list(dict.fromkeys(config.seeds))
    if not seeds:
        raise ConfigError("no seeds given; pass at least one (e.g. --seeds 0 1 2).")
    step = size_multiple(names, overrides)  # one H x W fits every model of the grid
    sizes = {c: category_size(root, c, image_size, aspect=config.aspect, step=step) for c in cats}
    rectangles = [c for c in cats if not isinstance(sizes[c], int)]
    if train.augment == "dihedral" and rectangles:
        warnings.warn(f"dihedral augmentation adds quarter turns, which a rectangle does not have: the inputs of "
                      f"{', '.join(map(repr, rectangles))} (e.g. {size_label(sizes[rectangles[0]])} px) are augmented "
                      "by flips only, their 4 symmetries (as augment=flip).", stacklevel=2)
    dataset = dataset_name(root)
    kinds = {c: category_type(root, c) for c in cats}
    specs = [JobSpec(data_root=root, category=c, model=m, dataset=dataset, category_type=kinds[c],
                     image_size=sizes[c], train=dataclasses.replace(train, seed=seed),
                     model_overrides=dict(overrides.get(m, {})), eval_config=config.eval_config,
                     val_fraction=config.val_fraction)
             for c in cats for seed in seeds for m in names]  # each validated as it is made
    digests = {c: data_fingerprint(root, c).digest for c in cats}  # after validation: hashing reads files
    return [dataclasses.replace(s, data_fingerprint=digests[s.category]) for s in specs]


@dataclass
class Plan:
    """What a run does: its jobs, the rows already in its CSV, and the tasks to run."""

    csv: Path
    runs_dir: Path  # the CSV's side-file folder (runs.runs_dir)
    table: pd.DataFrame  # the rows already in the CSV, read once
    specs: list[JobSpec]
    tasks: list[Task]  # the jobs whose row the CSV lacks (all with --force), in grid order

    @property
    def to_train(self) -> list[JobSpec]:
        return [t.spec for t in self.tasks if t.checkpoint is None]


def plan_jobs(specs: list[JobSpec], settings: Settings) -> Plan:
    """The jobs whose key is not in the CSV (all of them with ``force``), each trained or, when
    its model is already recorded (its ``train_hash`` in the CSV) and its checkpoint is on disk,
    re-evaluated from that checkpoint (never with ``force``: checkpoints never decide alone)."""
    csv, table = open_results(settings.results_csv)
    done = set(map(tuple, table[list(KEY_COLUMNS)].itertuples(index=False, name=None)))
    trained = set(zip(table["model"], table["train_hash"])) if "train_hash" in table else set()
    tasks = []
    for spec in specs:
        if not settings.force and spec.key() in done:
            continue
        checkpoint = None if settings.checkpoint_dir is None else spec.checkpoint_path(settings.checkpoint_dir)
        reusable = not settings.force and (spec.model, spec.train_hash()) in trained
        tasks.append(Task(spec, checkpoint if reusable and checkpoint.is_file() else None))
    return Plan(csv=csv, runs_dir=runs.runs_dir(csv), table=table, specs=specs, tasks=tasks)


def prepare(plan: Plan, settings: Settings) -> None:
    """Before any image is decoded: the jobs fit in memory, every folder they write to can be
    made (exit 2, not N failed jobs), say why jobs that look done run again, and keep what each
    category's data was (for a later "files differ" message)."""
    todo = [t.spec for t in plan.tasks]
    memory.check_jobs(plan.to_train)  # too large to train
    memory.check_evaluation(todo)  # an --eval-size whose pixel metrics cannot fit
    n_eval = len(todo) - len(plan.to_train)
    settings.log(f"{len(plan.specs)} job(s): {len(plan.specs) - len(todo)} already in {plan.csv}, "
                 f"{len(plan.to_train)} to train"
                 + (f", {n_eval} to evaluate from their checkpoints" if n_eval else "") + ".")
    if not todo:
        return
    manifests = {s.category: runs.manifest_path(plan.runs_dir, dataset=s.dataset, category=s.category,
                                                fingerprint=s.data_fingerprint) for s in todo}
    check_writable(plan.csv)
    for path in manifests.values():
        make_folder(path.parent, what="side-file folder", fix="pass another --results-csv", error=ResultsError)
    if settings.checkpoint_dir is not None:
        make_checkpoint_dir(settings.checkpoint_dir)
        for spec in {s.category: s for s in plan.to_train}.values():
            make_checkpoint_dir(spec.checkpoint_path(settings.checkpoint_dir).parent)
    if settings.cache_dir is not None:  # models.mvtec only writes it after decoding
        make_folder(settings.cache_dir, what="image cache folder", fix="pass another --cache-dir, or none",
                    error=ConfigError)
    if not settings.force:
        explain_reruns(plan.table, todo, plan.runs_dir, settings.log)
    for spec in {s.category: s for s in todo}.values():
        if not manifests[spec.category].is_file():
            runs.save_manifest(manifests[spec.category], data_fingerprint(spec.data_root, spec.category).files)


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


class Recorder:
    """The grid's side of an executor (``executor_local.Events``): numbers the jobs as they
    start (or finish, on Ray), keeps each finished job's row with its files, and reports
    failures in one line."""

    def __init__(self, plan: Plan, settings: Settings):
        self.plan, self.settings, self.log = plan, settings, settings.log
        self.many_seeds = len({s.train.seed for s in plan.specs}) > 1
        self.labels: dict[int, str] = {}  # id(spec) -> "[i/n] model on category"
        self.failures: list[dict] = []
        self.unwritten: list[dict] = []
        self.trained = 0

    def label(self, spec: JobSpec) -> str:
        if id(spec) not in self.labels:
            seed = f" (seed {spec.train.seed})" if self.many_seeds else ""
            number = f"[{len(self.labels) + 1}/{len(self.plan.tasks)}]"
            self.labels[id(spec)] = f"{number} {spec.model} on {spec.category}{seed}"
        return self.labels[id(spec)]

    def start(self, spec: JobSpec, note: str) -> None:
        self.log(f"{self.label(spec)}{note}")

    def failure(self, spec: JobSpec, error: BaseException, traceback_text: str | None) -> None:
        text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        failure = {"category": spec.category, "model": spec.model, "seed": spec.train.seed, "error": text}
        if traceback_text is not None:
            failure["traceback"] = traceback_text
        self.failures.append(failure)
        self.log(f"{self.label(spec)}: FAILED: {text}")

    def output(self, spec: JobSpec, data: CategoryData, output: JobOutput) -> None:
        """Append the job's row; its checkpoint and side files are written under the CSV's lock
        once the row is known to be kept (another run of the same job may have written its row
        meanwhile: its files then stay as they are, matching that row)."""
        errors: list[str] = []

        def write_files() -> None:
            errors.extend(write_output(spec, data, output, checkpoint_dir=self.settings.checkpoint_dir,
                                       runs_dir=self.plan.runs_dir))

        at, row = self.label(spec), output.row
        kept = append_row(self.plan.csv, row, replace=self.settings.force, write_files=write_files)
        if output.checkpoint is not None:
            self.trained += 1
            took = f"trained in {float(row['train_seconds']):.1f} s"
        else:
            took = f"re-evaluated from checkpoint in {output.seconds:.1f} s"
        note = "" if kept else " (another run wrote this row meanwhile; kept theirs)"
        self.log(f"{at}: image AUROC {_fmt(row['image_auroc'])}, pixel AUROC {_fmt(row['pixel_auroc'])}, "
                 f"AU-PRO {_fmt(row['aupro'])}, F1 {_fmt(row['f1'])} (floor {_fmt(row['f1_floor'])}), {took}{note}")
        for error in errors:
            self.log(f"{at}: {error}")
            self.unwritten.append({"category": spec.category, "model": spec.model, "seed": spec.train.seed,
                                   "error": error})


def execute(plan: Plan, settings: Settings) -> Recorder:
    """Run the plan's tasks on the chosen executor (both take the same arguments); returns what
    they reported."""
    recorder = Recorder(plan, settings)
    if settings.executor == "ray":
        from .executor_ray import run_jobs_on_ray as run  # only here: the local executor never imports Ray
    else:
        run = run_jobs_locally
    run(plan.tasks, lambda spec: load_category(spec, settings.cache_dir), recorder, settings)
    return recorder


def collect(plan: Plan, recorder: Recorder) -> pd.DataFrame:
    """The grid's rows (cached and new) as a DataFrame in grid order, with what the run did in
    ``df.attrs``."""
    table = read_results(plan.csv, missing_ok=True)
    index = {s.key(): i for i, s in enumerate(plan.specs)}
    table_keys = list(zip(*(table[c].astype(str) for c in KEY_COLUMNS)))
    mask = [k in index for k in table_keys]
    out = table.loc[mask].copy()
    out["_order"] = [index[k] for k, m in zip(table_keys, mask) if m]
    out = out.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    ran = len(plan.tasks) - len(recorder.failures)
    out.attrs.update(failures=recorder.failures, unwritten=recorder.unwritten, ran=ran, trained=recorder.trained,
                     evaluated=ran - recorder.trained, skipped=len(plan.specs) - len(plan.tasks),
                     results_csv=str(plan.csv))
    return out


def run_grid(config: GridConfig, settings: Settings | None = None) -> pd.DataFrame:
    """Train (or re-evaluate) and record every (category, seed, model) of ``config`` whose row
    is not yet in ``settings.results_csv``.

    A job whose model was trained by an earlier run (its ``train_hash`` is in the CSV and its
    checkpoint exists) is evaluated from the checkpoint without training; ``force`` retrains
    and replaces rows, and without the CSV every job trains (checkpoints never decide alone).
    Returns the grid's rows (cached and new) as a DataFrame in grid order; ``df.attrs`` holds
    ``failures`` (list of {category, model, seed, error}), ``unwritten`` (the same for rows kept
    without a file that could not be written, e.g. on a full disk), ``ran``, ``trained``,
    ``evaluated``, ``skipped`` and ``results_csv``. A failing job is reported in one line and
    the grid goes on; Ctrl-C stops it with every finished row kept.

    ``executor="ray"`` trains the jobs as Ray tasks (``executor_ray``); the rows, checkpoints
    and side files are still written here, by the driver.
    """
    settings = settings or Settings()
    settings.check()
    specs = make_specs(config)
    for spec in {s.category: s for s in specs}.values():
        if spec.image_size != canonical_size(config.image_size):  # chosen from the images (aspect keep or auto)
            settings.log(auto_aspect_line(spec.category, spec.image_size) if config.aspect == "auto" else
                         f"{spec.category}: input {size_label(spec.image_size)} px (height x width), "
                         "the aspect of its images.")
    plan = plan_jobs(specs, settings)
    prepare(plan, settings)
    return collect(plan, execute(plan, settings))
