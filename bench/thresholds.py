"""Decision-threshold rules: F1 / precision / recall at a threshold from the val normals only.

    python bench/thresholds.py [--data-root /work/shared/data/dev] [--categories grid hazelnut_toy]
                               [--demo-root data/demo | --no-demo] [--models cae vae vit_vae vae_grf]
                               [--seeds 0 1] [--val-fractions 0.1 0.3] [--min-val 0 8] [--epochs 25]
                               [--image-size 128]
                               [--batch-size 8] [--rules val_max val_p95 ...] [--num-threads 1]
                               [--cache-dir /tmp/threshold_scores] [--out-csv /tmp/threshold_rules.csv]
                               [--force]
    python bench/thresholds.py --data-root ''     # demo only
    python bench/thresholds.py --simulate         # rules on simulated val scores, no training (seconds)

1. Every (dataset, category, model, seed, val_fraction) is trained once with the project's
   public API (``pipeline.job.train_model``, the TrainConfig defaults unless overridden) and
   its val and test image scores (``pipeline.evaluate.score_split``) are cached in an npz under
   ``--cache-dir`` (default /tmp/threshold_scores), keyed by the job's config without the
   threshold rule (which holds the content fingerprint of the category's files); a rerun
   only reads the npz files. Nothing is written to the repository's
   results CSV or checkpoints/. The seed sets the model init, the data order AND which
   train/good images are held out as val; ``val_fraction`` is that hold-out's share, and
   ``--min-val N`` raises it, per category, to hold out at least N images (the price: N
   fewer training images); each (fraction, minimum) is one column of the tables.
2. Each rule of ``--rules`` (``pipeline.thresholds``) picks a threshold from the val scores
   only; a test image is called defective when its score is above it. Printed per rule, as
   means over (dataset, category, model, seed): F1, precision, recall, FPR = share of the
   good TEST images flagged (what the rule is meant to bound), how many runs got F1 = 0,
   and F1_odd: F1 when ONE odd normal image, scoring like the worst test image, is added to
   val (the robustness a default needs: one such image puts val_max above every defect).
   For reference: F1-max (the best threshold on test, an oracle) and the F1 floor 2p/(1+p)
   of flagging every image (p = share of defective test images). Then the per-category
   detail (F1 per rule, averaged over models and seeds).
3. ``--simulate``: no training; each rule's false-positive rate on log-normal val scores
   drawn for n = 2 ... 76 val images, clean and with one odd score (bench/README.md).

The demo dataset is written to ``--demo-root`` (``python -m pipeline demo-data``) if missing.
Small test sets (dev: 14 and 23 test images): one image moves F1 by several points.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from models import MODEL_NAMES, list_categories
from models.mvtec import dataset_name, list_files
from pipeline import metrics
from pipeline.demo_data import make_synthetic_dataset
from pipeline.evaluate import score_split
from pipeline.files import plain_name
from pipeline.fingerprint import data_fingerprint
from pipeline.job import JobSpec, config_hash, load_category, train_model
from pipeline.thresholds import DEFAULT_THRESHOLD_RULE, check_threshold_rule, val_threshold
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEV_ROOT = Path("/work/shared/data/dev")
DEFAULT_DEMO_ROOT = REPO / "data" / "demo"
DEFAULT_CACHE_DIR = Path("/tmp/threshold_scores")
DEFAULT_RULES = ("val_max", "val_p99", "val_p95", "val_p90", "val_mean+2std", "val_mean+3std", "val_median+2mad",
                 "val_median+2.5mad", "val_median+3mad", "val_lognorm_p95", "val_lognorm_p99")
DEFAULT_RULES_ALL = list(dict.fromkeys([DEFAULT_THRESHOLD_RULE, *DEFAULT_RULES]))


def cache_file(cache_dir: Path, spec: JobSpec) -> Path:
    """One npz per job, keyed by the job's config without its threshold rule (the rules are applied
    afterwards); the config holds the content fingerprint of the category's files, so regenerated
    or edited images (e.g. a new demo dataset written over the old one) are never served stale scores."""
    config = spec.config_dict()  # with the data fingerprint collect() gave the spec
    del config["eval"]["threshold_rule"]
    name = f"{spec.model}-seed{spec.train.seed}-val{spec.val_fraction:g}-{config_hash(config)}.npz"
    return cache_dir / plain_name(spec.dataset) / plain_name(spec.category) / name


def job_scores(spec: JobSpec, cache_dir: Path, data_cache: dict, *, force: bool, log) -> dict:
    """{"val": scores, "test": scores, "labels": 0/1, "train_seconds": s} of one job, trained or from the cache."""
    file = cache_file(cache_dir, spec)
    if file.exists() and not force:
        with np.load(file) as z:
            return {k: z[k] for k in z.files}
    key = (str(spec.data_root), spec.category, spec.train.seed, spec.val_fraction)
    if key not in data_cache:
        data_cache.clear()  # one category's splits at a time
        data_cache[key] = load_category(spec)
    data = data_cache[key]
    t0 = time.perf_counter()
    model, history = train_model(spec, data)
    bs, amp = history.get("batch_size", spec.train.batch_size), spec.train.amp
    _, val = score_split(model, data.val, batch_size=bs, amp=amp)
    _, test = score_split(model, data.test, batch_size=bs, amp=amp)
    out = {"val": val.numpy().astype(np.float64), "test": test.numpy().astype(np.float64),
           "labels": data.test.labels.numpy().astype(np.int64), "train_seconds": np.float64(history["seconds"])}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, file)
    log(f"  trained {spec.model:8s} {spec.dataset}/{spec.category} seed {spec.train.seed} val {spec.val_fraction:g}: "
        f"{len(out['val'])} val, {len(out['test'])} test, {time.perf_counter() - t0:.0f} s")
    return out


def rule_metrics(val: np.ndarray, test: np.ndarray, labels: np.ndarray, rule: str) -> dict:
    """Threshold from val only; F1, precision, recall, and the share of good test images flagged."""
    t = val_threshold(val, rule)
    good = labels == 0
    return {"threshold": t, **metrics.f1_at_threshold(labels, test, t),
            "fpr": float((test[good] > t).sum()) / max(1, int(good.sum()))}


def job_rows(base: dict, s: dict, rules) -> list[dict]:
    """One row per rule for one job's cached scores ``s``."""
    y = s["labels"]
    base = {**base, "n_val": len(s["val"]), "n_test": len(y), "auroc": metrics.image_auroc(y, s["test"]),
            "f1_max": metrics.f1_max(y, s["test"]), "floor": metrics.f1_floor(y)}
    odd = np.r_[s["val"], s["test"].max()]  # + one normal image as odd as the worst test image
    return [{**base, "rule": rule, **rule_metrics(s["val"], s["test"], y, rule),
             "f1_odd": rule_metrics(odd, s["test"], y, rule)["f1"]} for rule in rules]


def held_out_fraction(root: Path, category: str, val_fraction: float, min_val: int) -> float:
    """``val_fraction``, raised so that at least ``min_val`` of the category's train/good images are held out as val."""
    n_good = len(list_files(root, category).train)
    if min_val <= 0 or n_good < 2 or round(val_fraction * n_good) >= min_val:
        return val_fraction
    return min(min_val, n_good - 1) / n_good


def val_setting(val_fraction: float, min_val: int) -> str:
    return f"val {val_fraction:g}" + (f", min {min_val}" if min_val else "")


def collect(args, log) -> pd.DataFrame:
    roots = []
    if args.data_root is not None and Path(args.data_root) == DEFAULT_DEV_ROOT and not DEFAULT_DEV_ROOT.is_dir():
        log(f"no dev photographs at {DEFAULT_DEV_ROOT}: demo only (pass --data-root DIR for another dataset)")
    elif args.data_root is not None:
        roots.append(("dev", Path(args.data_root), args.categories))
    if not args.no_demo:
        demo = Path(args.demo_root)
        if not (demo / "DATASET.json").exists():
            log(f"writing the demo dataset to {demo}")
            make_synthetic_dataset(demo)
        roots.append(("demo", demo, None))
    train_kw = dict(epochs=args.epochs, batch_size=args.batch_size, num_threads=args.num_threads, progress=False)
    rows, data_cache = [], {}
    for group, root, categories in roots:
        dataset = dataset_name(root)
        for category in categories or list_categories(root):
            digest = data_fingerprint(root, category).digest  # in every spec: cache_file's key
            for vf, min_val in [(vf, m) for vf in args.val_fractions for m in args.min_val]:
                fraction = held_out_fraction(root, category, vf, min_val)
                for seed in args.seeds:
                    for model in args.models:
                        spec = JobSpec(data_root=root, category=category, model=model, dataset=dataset,
                                       image_size=args.image_size, train=TrainConfig(seed=seed, **train_kw),
                                       val_fraction=fraction, data_fingerprint=digest)
                        scores = job_scores(spec, Path(args.cache_dir), data_cache, force=args.force, log=log)
                        base = {"group": group, "dataset": dataset, "category": category, "model": model,
                                "seed": seed, "val_fraction": val_setting(vf, min_val),
                                "train_seconds": float(scores["train_seconds"])}
                        rows += job_rows(base, scores, args.rules)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, rules) -> pd.DataFrame:
    """One row per rule (means over dataset, category, model, seed) plus the oracle and the floor."""
    g = df.groupby("rule", sort=False)
    out = pd.DataFrame({"F1": g.f1.mean(), "P": g.precision.mean(), "R": g.recall.mean(), "FPR_good": g.fpr.mean(),
                        "F1=0": g.f1.apply(lambda f: int((f == 0).sum())), "F1_odd": g.f1_odd.mean(),
                        "train_s": g.train_seconds.mean(), "runs": g.size()}).loc[list(rules)]
    first = df[df.rule == rules[0]]
    floor = first.floor.mean()
    out.loc["F1-max (oracle)"] = [first.f1_max.mean(), *[math.nan] * 6, len(first)]
    out.loc["floor 2p/(1+p)"] = [floor, floor / (2 - floor), 1.0, 1.0, 0, floor, math.nan, len(first)]
    return out.astype({"F1=0": "Int64", "runs": int})


SIM_RULES = ("val_max", "val_p95", "val_mean+3std", "val_median+2mad", "val_median+3mad")


def simulate(rules=SIM_RULES, sizes=(2, 3, 5, 12, 36, 76), draws: int = 2000, sigma: float = 0.3) -> pd.DataFrame:
    """False-positive rate of each rule on log-normal(0, sigma) normal scores (no training): the
    median [10th, 90th percentile] over ``draws`` val sets of n scores, clean and with one odd
    val score at +6 sigma (log)."""
    rng = np.random.default_rng(0)
    norm = NormalDist(0.0, sigma)
    out = {}
    for odd in (False, True):
        for n in sizes:
            fpr = {rule: [] for rule in rules}
            for _ in range(draws):
                val = np.exp(rng.normal(0.0, sigma, n))
                if odd:
                    val[0] = math.exp(6 * sigma)
                for rule in rules:
                    fpr[rule].append(1.0 - norm.cdf(math.log(val_threshold(val, rule))))
            for rule in rules:
                lo, mid, hi = 100 * np.percentile(fpr[rule], [10, 50, 90])
                out.setdefault(rule, {})[("1 odd" if odd else "clean", n)] = f"{mid:4.1f} [{lo:.1f}, {hi:.1f}]"
    return pd.DataFrame(out)  # rows (clean | 1 odd, n), columns rules


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(DEFAULT_DEV_ROOT), help="MVTec-layout root (none: --data-root '')")
    p.add_argument("--categories", nargs="+", default=None, help="of --data-root (default: all)")
    p.add_argument("--demo-root", default=str(DEFAULT_DEMO_ROOT))
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--val-fractions", nargs="+", type=float, default=[0.1])
    p.add_argument("--min-val", nargs="+", type=int, default=[0],
                   help="hold out at least N val images per category (0: the fraction alone), e.g. --min-val 0 8")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--rules", nargs="+", default=None,
                   help=f"threshold rules (default: {' '.join(DEFAULT_RULES)} and the default rule)")
    p.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (1: share the machine)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--out-csv", default="/tmp/threshold_rules.csv", help="every (job, rule) row")
    p.add_argument("--force", action="store_true", help="retrain even if the scores are cached")
    p.add_argument("--simulate", action="store_true",
                   help="only print each rule's false-positive rate %% on simulated log-normal val scores")
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.data_root == "":
        args.data_root = None
    args.rules = list(dict.fromkeys(args.rules or DEFAULT_RULES_ALL))
    for rule in args.rules:
        try:
            check_threshold_rule(rule)
        except ValueError as e:
            p.error(str(e))
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.simulate:
        print("False-positive rate % (median [10 %, 90 %] over 2000 val sets) on log-normal(0, 0.3) scores,"
              " clean and with one val score at +6 sd, by number of val images:")
        print(simulate(args.rules if args.rules != DEFAULT_RULES_ALL else SIM_RULES).to_string())
        return

    t0 = time.perf_counter()
    df = collect(args, log)
    df.to_csv(args.out_csv, index=False)
    fmt = lambda x: f"{x:.3f}"
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    print(f"epochs {args.epochs}, image size {args.image_size}, batch {args.batch_size}, seeds {args.seeds}, "
          f"models {' '.join(args.models)}; default rule {DEFAULT_THRESHOLD_RULE}; {time.perf_counter() - t0:.0f} s")
    for (group, vf), part in df.groupby(["group", "val_fraction"], sort=False):
        n_val = sorted(int(n) for n in part.n_val.unique())
        cats = part.groupby("category").n_test.first().to_dict()
        print(f"\n== {group} ({part.dataset.iloc[0]}), {vf}: n_val {n_val}, test images {cats}; "
              f"mean image AUROC {part[part.rule == args.rules[0]].auroc.mean():.3f} ==")
        print(summary(part, args.rules).to_string(float_format=fmt))
    print("\n== per category: F1 per rule (mean over models and seeds), with image AUROC, F1-max and floor ==")
    detail = df.pivot_table(index="rule", columns=["val_fraction", "group", "category"], values="f1",
                            sort=False).loc[args.rules]
    first = df[df.rule == args.rules[0]].groupby(["val_fraction", "group", "category"], sort=False)
    for name, col in (("image AUROC", "auroc"), ("F1-max (oracle)", "f1_max"), ("floor 2p/(1+p)", "floor"),
                      ("n_val", "n_val")):
        detail.loc[name] = first[col].mean()
    print(detail.to_string(float_format=fmt))
    print(f"\nrows: {args.out_csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
