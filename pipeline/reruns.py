"""Why jobs that look done run again: said once per run, before anything trains.

A job runs again when its key is not in the CSV. That is expected for a new setting, but
puzzling when the CSV holds rows of "the same" job: the masks were read by an older rule,
the data root was renamed, or the category's files changed (the side-file manifests of
``runs.py`` say which). A row of another version of the keys is simply a row whose key does
not match: kept, and its job runs again, without a message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from models.mvtec import MASK_VERSION

from . import runs
from .fingerprint import data_fingerprint, describe_change
from .job import HASH_VERSION, JobSpec


def _version(config_json: str, key: str) -> int | None:
    try:
        return json.loads(config_json).get(key)
    except (TypeError, ValueError, AttributeError):
        return None


def explain_reruns(table: pd.DataFrame, specs: list[JobSpec], runs_folder: Path, log) -> None:
    """Say once why jobs that look done run again: rows evaluated with masks read by an older
    rule, a category whose rows are under another dataset name, or a category whose files
    changed since its rows were written (naming how many files differ). A row of another
    version of the keys is simply a row whose key does not match: kept, and its job runs again."""
    if table.empty or not specs or "data_fingerprint" not in table:
        return
    explain_renamed(table, specs, log)
    if "config_json" not in table:
        return
    ours = {(s.dataset, s.category, s.model) for s in specs}
    same_job = pd.Series([(d, c, m) in ours for d, c, m in zip(table["dataset"], table["category"], table["model"])],
                         index=table.index)
    current = table[same_job & (table["config_json"].map(lambda text: _version(text, "hash_version"))
                                == HASH_VERSION)]
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
    """Say when a category's files are in the CSV under another dataset name only (the same
    folder renamed, or another name in its DATASET.json); its jobs run again under the new name."""
    for spec in {s.category: s for s in specs}.values():
        same_data = table[(table["category"] == spec.category) & (table["data_fingerprint"] == spec.data_fingerprint)]
        others = sorted(set(same_data["dataset"]) - {spec.dataset})
        if others and not (same_data["dataset"] == spec.dataset).any():
            log(f"the rows of {spec.category!r} with these files are in the CSV under the dataset name "
                f"{others[0]!r}, but this data root is named {spec.dataset!r} (a dataset is named after its folder, "
                "or its DATASET.json, never after which categories it holds); its jobs run again under the new name "
                "(the old rows are kept).")
