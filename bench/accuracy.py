"""Detection quality: train the grid once, then evaluate every trained model under several scoring rules.

    python bench/accuracy.py [--data-root ../shared/data/dev] [--categories grid ...]
                             [--models cae vae vit_vae vae_grf] [--epochs 30] [--image-size 128|HxW]
                             [--aspect fixed|keep|auto]
                             [--batch-size 32] [--lr 1e-3] [--seeds 0 1]
                             [--min-steps N] [--repair F]
                             [--set cae.latent_dim=64 ...] [--train lr_schedule=constant ...]
                             [--scores default l2/4/mean l2/4/max ssim/4/top0.01 msgms/4/top0.01 ...]
                             [--eval-size 256] [--threshold-rule RULE]
                             [--label NAME] [--results-csv /tmp/accuracy_runs.csv]
                             [--out-csv /tmp/accuracy_scores.csv] [--num-threads 1] [--force]

``pipeline.grid.run_grid`` is called once per scoring rule, exactly as ``python -m pipeline
run --score RULE`` would be, with rows cached in a SCRATCH CSV under /tmp (never the
repository's evaluation_results_all_models.csv) and checkpoints under /tmp/accuracy_ckpt.
The first rule trains; every other rule is an evaluation setting, so the grid re-evaluates
the same checkpoints without training (the comparison is fair: same weights). A rule is
MAP/SIGMA/REDUCE (``models.scoring.ScoreConfig.parse``): map l2, ssim, msgms or l2msgms,
Gaussian sigma in px (0 = raw), reduce mean, max or topF, e.g. l2/0/mean (the classic
||x - x_hat||^2), l2/4/max, ssim/4/top0.01, msgms/4/top0.01; "default" is the default rule.
The models default to every registered one (``models.MODEL_NAMES``, as the notebook).
``--min-steps N`` and ``--repair F`` are ``--train min_steps=N`` and ``--train repair=F``,
passed only when given.

Printed: image AUROC, pixel AUROC, AU-PRO (at ``--eval-size``), F1 (threshold from val
normal scores only) and F1-max per category, model, seed and rule, with train / wall
seconds and the optimiser steps a job took (where the rows have a ``steps`` column); then
the mean over categories and seeds per model and rule. Every printed row is
appended to ``--out-csv`` with ``--label`` so runs can be compared afterwards. Small test
sets: one image moves AUROC by several points; compare settings, not digits.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch

from models import MODEL_NAMES
from models.scoring import ScoreConfig
from pipeline.__main__ import parse_overrides, parse_value
from pipeline.evaluate import DEFAULT_EVAL_SIZE, EvalConfig, parse_eval_size
from pipeline.grid import GridConfig, Settings, run_grid
from pipeline.results import DEFAULT_RESULTS_CSV
from pipeline.sizes import ASPECTS, DEFAULT_ASPECT, parse_image_size
from pipeline.thresholds import DEFAULT_THRESHOLD_RULE
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "dev"
DEFAULT_RULES = ("default", "l2/0/mean", "l2/4/mean", "l2/4/max", "l2/4/top0.01", "ssim/4/mean", "ssim/4/max",
                 "ssim/4/top0.01", "msgms/4/top0.01", "msgms/4/mean", "msgms/4/max", "l2msgms/4/top0.01")
METRICS = ["image_auroc", "pixel_auroc", "aupro", "f1", "f1_max"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="MVTec-layout root (default ../shared/data/dev)")
    p.add_argument("--categories", nargs="+", default=None)
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), help="default: every registered model")
    p.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--image-size", default="128", help="S (S x S px) or HxW; with --aspect keep, the short side")
    p.add_argument("--aspect", default=DEFAULT_ASPECT, choices=list(ASPECTS))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--min-steps", type=int, default=None, metavar="N", help="= --train min_steps=N")
    p.add_argument("--repair", type=float, default=None, metavar="F", help="= --train repair=F")
    p.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE", help="model config override")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    p.add_argument("--scores", nargs="+", default=list(DEFAULT_RULES), help="scoring rules MAP/SIGMA/REDUCE")
    p.add_argument("--eval-size", default=str(DEFAULT_EVAL_SIZE), help="px of the pixel metrics, or 'original'")
    p.add_argument("--threshold-rule", default=DEFAULT_THRESHOLD_RULE)
    p.add_argument("--label", default="", help="name of this setting in --out-csv")
    p.add_argument("--results-csv", default="/tmp/accuracy_runs.csv", help="scratch cache of trained rows")
    p.add_argument("--checkpoint-dir", default="/tmp/accuracy_ckpt")
    p.add_argument("--out-csv", default="/tmp/accuracy_scores.csv", help="every printed row is appended here")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="retrain rows already in --results-csv")
    return p


def append_rows(rows: pd.DataFrame, out_csv: Path) -> None:
    """Append to ``out_csv``; a file of other columns (an older run, before ``steps``) is rewritten
    with the union of both, so no value lands under another column's header."""
    if out_csv.exists():
        old = pd.read_csv(out_csv, dtype=str, keep_default_na=False)  # its cells exactly as written
        if list(old.columns) != list(rows.columns):
            pd.concat([old, rows], ignore_index=True).to_csv(out_csv, index=False)
            return
    rows.to_csv(out_csv, mode="a", header=not out_csv.exists(), index=False)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    # The repository's table, wherever this is run from (DEFAULT_RESULTS_CSV is relative to the cwd).
    if Path(a.results_csv).resolve() in {Path(DEFAULT_RESULTS_CSV).resolve(), (REPO / DEFAULT_RESULTS_CSV).resolve()}:
        raise SystemExit("--results-csv must be a scratch file, not the repository's results table.")
    torch.set_num_threads(a.num_threads)

    given = dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, min_steps=a.min_steps, repair=a.repair)
    train_kw = {k: v for k, v in given.items() if v is not None}
    for item in a.train:
        key, _, value = item.partition("=")
        v = parse_value(value)
        train_kw[key] = tuple(v) if isinstance(v, list) else v
    unknown = sorted(set(train_kw) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise SystemExit(f"TrainConfig has no field {', '.join(unknown)} in this version of the code; drop "
                         f"{', '.join('--' + k.replace('_', '-') for k in unknown)} (or the --train item).")
    overrides = parse_overrides(a.set)
    root = Path(a.data_root)
    train = TrainConfig(seed=a.seeds[0], device=a.device, num_threads=a.num_threads, progress=False, **train_kw)
    tables = []
    wall0 = time.perf_counter()
    rules = list(dict.fromkeys(ScoreConfig.parse(text) for text in a.scores))  # "default" is l2/4/top0.01: once
    for i, score in enumerate(rules):
        ev = EvalConfig(score=score, eval_size=parse_eval_size(a.eval_size), threshold_rule=a.threshold_rule)
        t0 = time.perf_counter()
        config = GridConfig(data_root=root, categories=a.categories, models=a.models,
                            image_size=parse_image_size(a.image_size), aspect=a.aspect, train=train, seeds=a.seeds,
                            model_overrides=overrides, eval_config=ev)
        df = run_grid(config, Settings(results_csv=a.results_csv, force=a.force and i == 0,
                                       checkpoint_dir=Path(a.checkpoint_dir), log=lambda m: print(m, flush=True)))
        for f in df.attrs.get("failures", []):
            print(f"FAILED {f['model']} on {f['category']}: {f['error']}")
        print(f"rule {score.name}: {df.attrs['trained']} trained, {df.attrs['evaluated']} evaluated from checkpoints, "
              f"{df.attrs['skipped']} cached, {time.perf_counter() - t0:.1f} s")
        df["rule"] = score.name + (" *" if score == ScoreConfig() else "")
        tables.append(df)
    wall = time.perf_counter() - wall0
    table = pd.concat(tables, ignore_index=True)
    table["label"], table["wall_s"] = a.label, wall
    out_csv = Path(a.out_csv)
    steps = ["steps"] if "steps" in table.columns else []  # the optimiser steps of each job, in newer rows
    keep = ["label", "dataset", "category", "model", "seed", "rule", "image_size", "eval_size", "epochs",
            "threshold_rule", *METRICS, "train_seconds", *steps, "config_hash", "wall_s"]
    append_rows(table[keep], out_csv)

    cols = ["category", "model", "seed", "rule", *METRICS, "train_seconds", *steps]
    fmt = lambda x: f"{x:.3f}"
    with pd.option_context("display.width", 220, "display.max_rows", 1000):
        print(f"\n== {a.label or 'run'}: {root}, {a.image_size} px ({a.aspect}), metrics at {a.eval_size}, "
              f"train {train_kw or 'defaults'}, overrides {overrides or 'none'}")
        print(table[cols].to_string(index=False, float_format=fmt))
        mean = table.groupby(["model", "rule"], sort=False)[cols[4:]].mean().reset_index()  # metrics, seconds, steps
        print("\nmean over categories (and seeds):")
        print(mean.to_string(index=False, float_format=fmt))
    print(f"\nwall {wall:.0f} s; rows appended to {out_csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
