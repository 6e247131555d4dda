"""Compare settings of bench/accuracy.py runs: mean ± sd over seeds per (category, model), one column per label.

    python bench/summarize.py [--scores-csv /tmp/accuracy_scores.csv] [--labels square128 keep80 ...]
                              [--metrics image_auroc pixel_auroc aupro] [--rule RULE]

bench/accuracy.py appends every row it prints to its --out-csv with its --label; this reads
that file and prints, for each metric, a table of category x model with one "mean ± sd"
cell per label (seeds pooled), then the mean over categories, so settings run one after
another (e.g. square vs kept aspect) can be read side by side. Only rows of the default
scoring rule are used unless --rule names another (as accuracy.py prints it, e.g.
"l2|sigma4|top0.01"). Rows of a run without ``--label`` are labelled ``NO_LABEL``.
"""
from __future__ import annotations

import argparse

import pandas as pd

NO_LABEL = "(no label)"  # the label of rows bench/accuracy.py wrote without --label (an empty cell)


def cell(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scores-csv", default="/tmp/accuracy_scores.csv", help="bench/accuracy.py's --out-csv")
    p.add_argument("--labels", nargs="+", help=f"labels to compare, in this order (default: all, as first seen; "
                                                f"{NO_LABEL!r} for rows written without --label)")
    p.add_argument("--metrics", nargs="+", default=["image_auroc", "pixel_auroc", "aupro"])
    p.add_argument("--rule", help="scoring rule (default: the default rule, marked '*' by accuracy.py)")
    a = p.parse_args(argv)
    df = pd.read_csv(a.scores_csv, dtype={"image_size": str, "eval_size": str, "label": str})
    df["label"] = df["label"].fillna(NO_LABEL)  # an empty label reads back as NaN, which no column can be named
    df = df[df["rule"] == a.rule] if a.rule else df[df["rule"].str.endswith(" *")]
    labels = a.labels or list(dict.fromkeys(df["label"]))
    df = df[df["label"].isin(labels)]
    if df.empty:
        raise SystemExit(f"no rows of labels {labels} in {a.scores_csv}.")
    sizes = df.groupby(["label", "category"])["image_size"].first().unstack("label")[labels]
    seeds = df.groupby("label")["seed"].nunique()
    print("input size (H x W) per category and label; seeds per label: "
          + ", ".join(f"{k} {seeds[k]}" for k in labels))
    print(sizes.to_string(), "\n")
    for metric in a.metrics:
        table = df.groupby(["category", "model", "label"], sort=False)[metric].apply(cell).unstack("label")[labels]
        # The mean over categories of each seed's value, then mean ± sd over seeds.
        per_seed = df.groupby(["model", "label", "seed"], sort=False)[metric].mean()
        overall = per_seed.groupby(["model", "label"], sort=False).apply(cell).unstack("label")[labels]
        overall.index = pd.MultiIndex.from_product([["mean"], overall.index])
        with pd.option_context("display.width", 220, "display.max_colwidth", 40):
            print(f"== {metric} (mean ± sd over seeds)")
            print(pd.concat([table, overall]).to_string(), "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
