"""Command line: ``python -m pipeline run | plots | demo-data | real-data | predict | export`` (the notebook calls the
same functions).

Exit status: 0 success; 1 some jobs failed (the others' rows are written); 2 a bad
argument, dataset or file (one sentence on stderr, no traceback); 130 interrupted (every
finished row is kept; the same command resumes), 143 / 129 the same for SIGTERM / SIGHUP.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import pandas as pd

from models import DEFAULT_IMAGE_SIZE, MODEL_NAMES
from models.errors import ConfigError, UserError
from models.scoring import SCORE_MAPS, ScoreConfig

from . import demo_data, export, plots, predict, real_data, runs
from .checkpoints import DEFAULT_CHECKPOINT_DIR
from .defects import DEFECT_KINDS
from .demo_data import make_synthetic_dataset
from .evaluate import DEFAULT_EVAL_SIZE, EvalConfig, parse_eval_size
from .grid import EXECUTORS, GridConfig, Settings, run_grid
from .report import few_val_note
from .results import DEFAULT_RESULTS_CSV, read_results
from .sizes import ASPECTS, AUTO_KEEP, DEFAULT_ASPECT, parse_image_size
from .thresholds import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES
from .train import TrainConfig

DEFAULT_DATA_ROOT = demo_data.DEFAULT_DATA_ROOT
DEMO_DIR = demo_data.DEFAULT_DIR
TABLE_COLUMNS = ["category", "model", "seed", "image_auroc", "pixel_auroc", "aupro", "f1", "f1_max", "f1_floor",
                 "train_seconds"]


def parse_value(text: str):
    """'8' -> 8, '0.5' -> 0.5, '[8,16]' -> [8, 16], 'true' -> True, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return {"True": True, "False": False}.get(text, text)


def parse_overrides(items: list[str]) -> dict:
    """['cae.latent_dim=64', ...] -> {'cae': {'latent_dim': 64}, ...} (lists become tuples)."""
    out: dict = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        model, dot, key = name.partition(".")
        if not (sep and dot and model and key):
            raise ConfigError(f"--set expects MODEL.KEY=VALUE (e.g. --set cae.latent_dim=64), got {item!r}.")
        value = parse_value(value)
        out.setdefault(model, {})[key] = tuple(value) if isinstance(value, list) else value
    return out


def _data_root(arg: str | None, log) -> Path:
    """--data-root, else $MVTEC_ROOT, else ./mvtec_anomaly_detection; only when none was named
    and that default is absent, the demo dataset in data/demo: the notebook's rule and message
    (``demo_data.find_or_make_dataset``). A named path that is wrong, or a default folder
    without categories, is an error naming it."""
    return demo_data.find_or_make_dataset(arg if arg is not None else os.environ.get("MVTEC_ROOT"), DEMO_DIR, log=log)


def _print_table(df) -> None:
    if df.empty:
        print("(no results)")
        return
    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    few_val = few_val_note(df)
    if few_val:
        print(f"\nnote: {few_val}")


def cmd_run(args) -> int:
    log = lambda msg: print(msg, flush=True)
    root = _data_root(args.data_root, log)
    seeds = args.seeds if args.seeds is not None else [args.seed]
    train = TrainConfig(epochs=args.epochs, min_steps=args.min_steps, repair=args.repair, defects=args.defects,
                        batch_size=args.batch_size, lr=args.lr, seed=seeds[0],
                        device=args.device, amp=not args.no_amp, compile=args.compile,
                        num_threads=args.num_threads, progress=not args.no_progress)
    eval_config = EvalConfig(score=ScoreConfig.parse(args.score), eval_size=parse_eval_size(args.eval_size),
                             threshold_rule=args.threshold_rule)
    config = GridConfig(data_root=root, categories=args.categories, models=args.models,
                        image_size=parse_image_size(args.image_size), aspect=args.aspect, train=train, seeds=seeds,
                        model_overrides=parse_overrides(args.set), eval_config=eval_config)
    settings = Settings(results_csv=args.results_csv, checkpoint_dir=args.checkpoint_dir, cache_dir=args.cache_dir,
                        force=args.force, log=log, executor=args.executor, address=args.address,
                        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                        max_concurrent_jobs=args.max_concurrent_jobs)
    df = run_grid(config, settings)
    print()
    _print_table(df)
    failures = df.attrs.get("failures", [])
    if failures:
        print(f"\n{len(failures)} job(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['model']} on {f['category']}: {f['error']}", file=sys.stderr)
    unwritten = df.attrs.get("unwritten", [])
    if unwritten:  # the rows are in the CSV; what is missing must not pass unnoticed (exit 1)
        print(f"\n{len(unwritten)} row(s) were kept without a file that could not be written (their numbers are "
              "right; to write it, rerun those jobs with --force once there is room):", file=sys.stderr)
        for f in unwritten:
            print(f"  {f['model']} on {f['category']}: {f['error']}", file=sys.stderr)
    return 1 if failures or unwritten else 0


def cmd_plots(args) -> int:
    df = read_results(args.results_csv)
    curves = runs.read_curves(df, args.results_csv)
    for path in plots.make_all_figures(df, Path(args.out), curves=curves):
        print(path)
    return 0


def cmd_demo_data(args) -> int:
    print(make_synthetic_dataset(args.out, seed=args.seed))
    return 0


def cmd_real_data(args) -> int:
    out = args.out or real_data.DEFAULT_OUT.format(name=args.name)
    print(real_data.write_elpv(out, seed=args.seed, max_train=args.max_train,
                               test_good_fraction=args.test_good_fraction, source=args.source).message())
    return 0


def build_parser():
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Train and compare reconstruction-based anomaly detectors (CAE, VAE, ViT-VAE, VAE-GRF) "
                    "on MVTec-layout datasets.",
        epilog="Exit status: 0 ok, 1 some jobs failed (or rows kept without a file that could not be written), "
               "2 bad input (one sentence on stderr), 130 interrupted (Ctrl-C), 143 / 129 stopped by SIGTERM / SIGHUP.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,plots,demo-data,real-data,predict,export}")

    r = sub.add_parser(
        "run", help="train and evaluate every (model, category) not yet in the results CSV",
        description="Train and evaluate every (model, category) pair whose row (same dataset and config) is not "
                    "yet in the results CSV; each row is appended as soon as its job ends, so an interrupted "
                    "run resumes where it stopped. Delete the CSV or pass --force to retrain.",
    )
    r.add_argument("--data-root", metavar="DIR",
                   help=f"dataset in MVTec AD layout (default: $MVTEC_ROOT or ./{DEFAULT_DATA_ROOT}; "
                        f"if that is missing, the demo dataset in {DEMO_DIR})")
    # List options accumulate: "--models cae --models vae" runs both (argparse's default keeps the last one only).
    r.add_argument("--categories", nargs="+", action="extend", metavar="C",
                   help="categories to run (default: all under the root)")
    r.add_argument("--models", nargs="+", action="extend", metavar="M",
                   help=f"models to run (default: all: {' '.join(MODEL_NAMES)})")
    r.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help=f"training epochs (default {d.epochs})")
    r.add_argument("--min-steps", type=int, default=d.min_steps, metavar="N",
                   help="at least N optimiser steps per job: a small category trains for more epochs until it has "
                        f"taken them (default {d.min_steps}; 0 = the epochs alone)")
    r.add_argument("--repair", type=float, default=d.repair, metavar="F",
                   help="repair training: this share of each training batch (0 to 1) gets synthetic defects and the "
                        f"model learns to reconstruct the clean image (default {d.repair:g}: off)")
    r.add_argument("--defects", default=d.defects, metavar="KIND",
                   help=f"what fills the synthetic defects of --repair: {', '.join(DEFECT_KINDS)} (mixed = each "
                        f"defect one of the others; default {d.defects})")
    r.add_argument("--image-size", default=str(DEFAULT_IMAGE_SIZE), metavar="S|HxW",
                   help=f"input size in px: S for S x S, or HxW (height x width, e.g. 96x240); every image is "
                        f"resized to it (default {DEFAULT_IMAGE_SIZE})")
    r.add_argument("--aspect", default=DEFAULT_ASPECT, choices=list(ASPECTS),
                   help="fixed = every image resized to --image-size as given; keep = --image-size is the short "
                        "side and the long side follows each category's median aspect ratio, for products that "
                        "are not square; auto = keep for a category whose median image is beyond "
                        f"{AUTO_KEEP:g}:1 either way, fixed for the others (default {DEFAULT_ASPECT})")
    r.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B",
                   help=f"batch size (default {d.batch_size})")
    r.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    seed = r.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=d.seed, metavar="K", help=f"seed of everything (default {d.seed})")
    seed.add_argument("--seeds", type=int, nargs="+", action="extend", metavar="K",
                      help="several seeds: one row per seed (e.g. --seeds 0 1 2); tables show mean +- sd")
    r.add_argument("--results-csv", default=DEFAULT_RESULTS_CSV, metavar="FILE",
                   help=f"results table and cache (default {DEFAULT_RESULTS_CSV})")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto = cuda, then mps, then cpu (default auto)")
    r.add_argument("--force", action="store_true", help="retrain and replace rows already in the CSV")
    r.add_argument("--set", action="append", metavar="MODEL.KEY=VALUE",
                   help="override a model setting, e.g. --set cae.latent_dim=64 --set vae.widths=[16,32,64]")
    r.add_argument("--score", default="default", metavar="MAP/SIGMA/REDUCE",
                   help=f"scoring rule MAP/SIGMA/REDUCE, MAP one of {', '.join(SCORE_MAPS)} (msgms = multi-scale "
                        "gradient-magnitude similarity), e.g. l2/4/top0.01, ssim/4/max, msgms/4/top0.01, l2/0/mean "
                        f"(default {ScoreConfig().name}); "
                        "an evaluation setting: a trained model is re-scored from its checkpoint, not retrained")
    r.add_argument("--eval-size", default=str(DEFAULT_EVAL_SIZE), metavar="PX|original",
                   help=f"resolution of the pixel metrics: maps upsampled, masks read at it (default "
                        f"{DEFAULT_EVAL_SIZE}, the common MVTec protocol); 'original' = each image's own size")
    r.add_argument("--threshold-rule", default=DEFAULT_THRESHOLD_RULE,
                   help=f"decision threshold from val normal scores only: {'; '.join(THRESHOLD_RULES)} "
                        f"(default {DEFAULT_THRESHOLD_RULE}, measured in bench/README.md)")
    r.add_argument("--checkpoint-dir", default=DEFAULT_CHECKPOINT_DIR, metavar="DIR",
                   help=f"where each job's checkpoint is saved (default {DEFAULT_CHECKPOINT_DIR}/)")
    r.add_argument("--cache-dir", metavar="DIR", help="optional disk cache of decoded images")
    r.add_argument("--num-threads", type=int, default=0, metavar="N", help="CPU threads for torch (default: all)")
    r.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    r.add_argument("--compile", action="store_true", help="torch.compile the training step (long GPU runs)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--executor", default="local", choices=list(EXECUTORS),
                   help="local = one job after another in this process; ray = each job a Ray task (README, "
                        "'Scaling out'); rows, checkpoints and side files are written here either way (default local)")
    r.add_argument("--address", metavar="ADDR",
                   help="with --executor ray: 'auto' or ray://HOST:PORT joins a running cluster (default: start "
                        "a local Ray on this machine)")
    r.add_argument("--gpus-per-job", type=float, metavar="G",
                   help="with --executor ray: GPUs per job, fractions share one (e.g. 0.25; default 1 where the "
                        "cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-job", type=float, default=1, metavar="C",
                   help="with --executor ray: CPUs per job, also its torch threads (default 1)")
    r.add_argument("--max-concurrent-jobs", type=int, metavar="N",
                   help="with --executor ray: at most N jobs in flight (default: twice as many as the cluster "
                        "runs at once)")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plots", help="draw the comparison figures from a results CSV",
                        description="Draw the comparison figures (F1, ROC AUC bars, heatmap, distributions) "
                                    "from a results CSV.")
    pl.add_argument("--results-csv", default=DEFAULT_RESULTS_CSV, metavar="FILE",
                    help=f"(default {DEFAULT_RESULTS_CSV})")
    pl.add_argument("--out", default="results", metavar="DIR", help="output folder (default results/)")
    pl.set_defaults(func=cmd_plots)

    dd = sub.add_parser("demo-data", help="write the built-in demo dataset (MVTec layout)",
                        description="Write the built-in procedural demo dataset in MVTec AD layout.")
    dd.add_argument("--out", default=DEMO_DIR, metavar="DIR", help=f"output folder (default {DEMO_DIR})")
    dd.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    dd.set_defaults(func=cmd_demo_data)

    rd = sub.add_parser("real-data", help="write a real dataset anyone can install (ELPV solar cells) in MVTec layout",
                        description="Write a real dataset in MVTec AD layout. elpv: the solar-cell images of the PyPI "
                                    f"package elpv-dataset (install: {real_data.INSTALL_HINT}), one category per cell "
                                    "type (elpv_mono, elpv_poly); defect-free cells split by seed into train/good and "
                                    "test/good, defective ones in test/defect, the uncertain ones left out; no masks "
                                    f"(image metrics only). Licence {real_data.LICENSE_NAME}.")
    rd.add_argument("name", choices=list(real_data.DATASETS), help="the dataset to write")
    rd.add_argument("--out", metavar="DIR", help="a new or empty output folder (default data/NAME)")
    rd.add_argument("--seed", type=int, default=0, metavar="K", help="seed of the train/test split (default 0)")
    rd.add_argument("--max-train", type=int, default=real_data.DEFAULT_MAX_TRAIN, metavar="N",
                    help=f"at most N defect-free cells per category in train/good, a seeded choice (default "
                         f"{real_data.DEFAULT_MAX_TRAIN})")
    rd.add_argument("--test-good-fraction", type=float, default=real_data.DEFAULT_TEST_GOOD_FRACTION, metavar="F",
                    help="at least this share of the defect-free cells goes to test/good; the cells beyond "
                         f"--max-train go there too (default {real_data.DEFAULT_TEST_GOOD_FRACTION})")
    rd.add_argument("--source", metavar="DIR",
                    help="a folder holding the package's labels.csv and images/ (default: the installed elpv-dataset)")
    rd.set_defaults(func=cmd_real_data)

    predict.add_parser(sub)
    export.add_parser(sub)
    return p


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, so that it ends as Ctrl-C does (every
    finished row kept, temporary files removed, Ray tasks cancelled)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def sigterm_and_sighup_as_ctrl_c():
    """While the command runs, SIGTERM (a scheduler's stop, `kill`) and SIGHUP (the terminal
    closed) raise ``Stopped``; by default they would end the process without a word. A signal
    that is ignored (nohup) stays ignored; the previous handlers are put back afterwards."""
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)  # no SIGHUP on Windows
        try:
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _stop)
        except ValueError:  # not the main thread: signals cannot be handled here
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    # Warnings are for people: one line each, without source lines.
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        with sigterm_and_sighup_as_ctrl_c():
            return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the system refused (disk full, not a folder, permissions): not a bug of ours
        where = f" {e.filename!r}" if e.filename else ""
        print(f"error: cannot access{where} ({e.strerror or e}); check the path, its permissions "
              "and the free disk space.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        csv = getattr(args, "results_csv", None)
        kept = f"; finished rows are kept in {csv}, run the same command to resume" if args.command == "run" else ""
        signum = e.signum if isinstance(e, Stopped) else None
        what = "interrupted" if signum is None else f"stopped by {signal.Signals(signum).name}"
        print(f"\n{what}{kept}.", file=sys.stderr)
        return 130 if signum is None else 128 + signum  # the shell's status of a process ended by that signal


if __name__ == "__main__":
    sys.exit(main())
