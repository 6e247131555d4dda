"""The results CSV: one row per finished job, and the cache that lets a rerun skip it.

One row per key (dataset, category, model, config_hash); ``config_hash`` covers everything
that changes a result, the data's fingerprint included (see ``job.JobSpec.config_dict``).
The per-image scores and training curves behind a row are side files (``runs.py``). A rerun skips the keys already
present and writes nothing (the file stays byte-identical); ``force`` replaces them;
deleting the file retrains everything.

Each row is written the moment its job ends: under an exclusive ``fcntl.flock`` on a side
lock file, the CSV is re-read (another run may have added rows), the row appended, the
table written to a temporary file in the same folder and renamed over the CSV. A SIGKILL
or Ctrl-C at any point leaves either the old or the new complete file, and two runs
sharing one CSV neither lose nor duplicate rows. Existing cells are kept as the exact text
they were written as; columns of an older or newer schema are kept (missing ones are
empty). A CSV that cannot be read is an error naming it and is never overwritten.

A CSV that is a symbolic link (``link.csv -> shared/results.csv``) is written where it
points (``results_path``): the rename, the lock file and the side-file folder are beside the
real file, so the link stays a link and every run sharing the real file sees each row.
Text columns (``TEXT_COLUMNS``) are read as the exact text written: a category, dataset or
model named NA, None, null or nan is that name, never a missing value.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import UserError

from .files import atomic_write, make_folder

try:  # POSIX; elsewhere concurrent runs on one CSV are not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

DEFAULT_RESULTS_CSV = "evaluation_results_all_models.csv"
KEY_COLUMNS = ("dataset", "category", "model", "config_hash")
# The contract's columns, in this order (docs/design.md, "The results CSV") ...
COLUMNS = (
    "dataset", "category", "category_type", "model", "image_auroc", "pixel_auroc", "aupro", "f1",
    "precision", "recall", "threshold", "threshold_rule", "f1_max", "f1_floor", "score", "epochs", "steps",
    "image_size", "eval_size", "seed", "train_seconds", "infer_ms_per_image", "params", "data_fingerprint",
    "train_hash", "config_hash", "device", "torch_version", "finished_at",
)
# ... then these extras.
EXTRA_COLUMNS = (
    "peak_memory_mb", "n_train", "n_val", "n_test", "train_loss", "val_loss", "batch_size", "lr",
    "data_seconds", "score_seconds", "metrics_seconds", "config_json",
)
# image_size and eval_size are text: "128" (square) or "96x240" (height x width), or "original".
TEXT_COLUMNS = ("dataset", "category", "category_type", "model", "threshold_rule", "score", "image_size", "eval_size",
                "data_fingerprint", "train_hash", "config_hash", "device", "torch_version", "finished_at",
                "config_json")
# Numbers read back with a check: a metric outside [0, 1] (95 for 0.95) or a seed that is not a
# whole number would be a wrong number in every table; such a cell is read as missing, with a warning.
UNIT_INTERVAL_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall", "f1_max", "f1_floor")
WHOLE_NUMBER_COLUMNS = ("seed",)
# Columns a table of this version cannot be read without (the key columns, and the seed that tells rows apart).
REQUIRED_COLUMNS = (*KEY_COLUMNS, "seed")


class ResultsError(UserError, ValueError):
    """A results CSV that cannot be read or written."""


def cell_text(value) -> str:
    """A row value as CSV text: floats with repr (exact round trip), NaN/None as empty."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def _ordered_columns(*tables_columns) -> list[str]:
    """The contract's columns, the extras, then any other columns in the order first seen."""
    seen = list(COLUMNS) + list(EXTRA_COLUMNS)
    for cols in tables_columns:
        seen += [c for c in cols if c not in seen]
    present = set().union(*map(set, tables_columns))
    return [c for c in seen if c in present or c in COLUMNS]


def _unreadable(csv: Path, why: str) -> ResultsError:
    return ResultsError(
        f"results file {str(csv)!r} cannot be read ({why}); it was left untouched: "
        f"fix or move it, or pass another --results-csv."
    )


def read_text_table(csv: Path) -> pd.DataFrame:
    """The CSV with every cell as the exact text written (used to append without rewriting cells)."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise _unreadable(csv, "the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _unreadable(csv, str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__) from None
    except OSError as e:
        raise _unreadable(csv, e.strerror or type(e).__name__) from None
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise _unreadable(csv, f"it has no {', '.join(missing)} column, so it is not a results table of this version")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:  # the key columns are there: a column renamed or deleted by hand, never an older version
        unknown = [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]
        found = (f" {', '.join(map(repr, unknown[:3]))} {'are not columns' if len(unknown) > 1 else 'is not a column'}"
                 " of this version" if unknown else "")
        raise ResultsError(
            f"results file {str(csv)!r} has no {', '.join(missing)} column (renamed or deleted by hand?{found}); "
            f"name that column {' / '.join(missing)} again in its header row, or restore it from a copy "
            "(the file was left untouched)."
        )
    return df


def results_path(csv) -> Path:
    """Where the results of ``csv`` really are: ``~`` expanded and symbolic links followed
    (also a link to a file not yet written). Writing through the link's own path would replace
    the link by a regular file, so the shared file it points to would never get the rows. A
    path that is not a link is kept as given (linked folders above it need nothing: the
    rename and the lock happen in the folder they lead to anyway)."""
    csv = Path(csv).expanduser()
    return Path(os.path.realpath(csv)) if csv.is_symlink() else csv


def read_results(csv=DEFAULT_RESULTS_CSV, *, missing_ok: bool = False) -> pd.DataFrame:
    """The results table with typed columns; every contract column is present (NaN where an
    older file lacks it) and no column of the file is dropped. Text columns hold the exact
    text written (an empty cell is NaN): pandas' default missing-value strings (NA, None,
    null, nan, n/a, ...) are legitimate names of a category, dataset or root folder. A
    numeric cell that is not a usable number (edited by hand: '0,95', 'n/a'; a metric outside
    [0, 1]; a seed that is not a whole number) is NaN, said in one warning naming each cell."""
    csv = results_path(csv)
    if not csv.exists():
        if missing_ok:
            return pd.DataFrame(columns=list(COLUMNS))
        raise ResultsError(
            f"no results file at {str(csv)!r}; run `python -m pipeline run` first or pass --results-csv."
        )
    text = read_text_table(csv)  # the same checks (and errors) as when appending
    df = pd.read_csv(csv, dtype={c: str for c in TEXT_COLUMNS})
    for c in TEXT_COLUMNS:
        if c in df.columns:  # the numbers parse as before; only the text cells are taken verbatim
            df[c] = text[c].where(text[c] != "", np.nan).astype(object)
    _check_numbers(df, text, csv)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[_ordered_columns(df.columns)]


def _not_a_number(cells: pd.Series, column: str) -> tuple[pd.Series, pd.Series]:
    """Why each written cell of a numeric ``column`` is not a usable number ('' where it is, or is
    empty), and the cells' values (NaN where empty or not a number)."""
    written = cells.str.strip() != ""
    values = pd.to_numeric(cells.str.strip(), errors="coerce")  # 'nan' and pandas' 'n/a', 'NA' ... are NaN too
    why = pd.Series("", index=cells.index)
    why[written & values.isna()] = "not a number"
    if column in UNIT_INTERVAL_COLUMNS:
        why[written & ((values < 0) | (values > 1))] = "outside [0, 1]"
    if column in WHOLE_NUMBER_COLUMNS:
        why[written & values.notna() & ((values % 1 != 0) | (values < 0))] = "not a whole number"
    return why, values


def _check_numbers(df: pd.DataFrame, text: pd.DataFrame, csv: Path) -> None:
    """Numeric cells edited by hand into text ('0,95', 'n/a') or out of their range ('95') are read
    as missing in ``df``, said in one warning naming each cell: a silent NaN would leave the
    figures saying "mean of 2 seeds" over one seed's value."""
    bad = []
    for column in [c for c in (*COLUMNS, *EXTRA_COLUMNS) if c in df.columns and c not in TEXT_COLUMNS]:
        why, values = _not_a_number(text[column], column)
        rows = why.index[why != ""]
        if len(rows):
            df[column] = values.where(why == "")
            bad += [(i, column, why[i]) for i in rows]
    if not bad:
        return
    bad.sort()  # in the file's row order
    cells = [f"{text.at[i, 'category']} / {text.at[i, 'model']} / seed {text.at[i, 'seed'] or '?'}: "
             f"{column} {text.at[i, column]!r} ({why})" for i, column, why in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(
        f"results file {str(csv)!r}: {len(bad)} cell{'s are' if len(bad) > 1 else ' is'} not a usable number "
        f"({'; '.join(cells)}{more}); read as missing, so left out of the means (a row without a seed is also "
        f"left out of the per-seed side files): write a number with a decimal point (0.95), or leave the cell empty.",
        stacklevel=3,
    )


@contextlib.contextmanager
def _locked(csv: Path):
    """Exclusive lock on ``.<csv name>.lock`` next to the CSV (blocks while another run writes)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = csv.with_name(f".{csv.name}.lock")
    try:
        f = open(lock, "a")
    except OSError as e:
        raise ResultsError(f"cannot create the lock file {str(lock)!r} ({e.strerror}); make the folder writable "
                           "or pass another --results-csv.") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write_csv(df: pd.DataFrame, csv: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``csv`` (all or nothing)."""
    keep_mode = csv.stat().st_mode & 0o777 if csv.exists() else None  # the old file's permissions
    try:
        with atomic_write(csv, "w", permissions=keep_mode) as f:
            df.to_csv(f, index=False)
    except OSError as e:  # disk full, quota, file size limit, read-only folder: the old file was never touched
        fix = "make the folder writable" if isinstance(e, PermissionError) else "free disk space"
        raise ResultsError(f"cannot write results to {str(csv)!r} ({e.strerror or e}); the file was left as it was: "
                           f"{fix} or pass another --results-csv.") from None


def open_results(csv) -> tuple[Path, pd.DataFrame]:
    """The path to write to (``results_path``: a symbolic link's target) and the rows already
    there (``read_text_table``; no rows if there is no file yet). Reads only: a finished grid on
    a read-only share just reports its rows."""
    csv = results_path(csv)
    table = read_text_table(csv) if csv.exists() else pd.DataFrame(columns=list(KEY_COLUMNS))
    return csv, table


def runs_dir(csv) -> Path:
    """The folder of the side files (``pipeline.runs``) of the results CSV ``csv``: ``x.csv`` ->
    ``x.runs/`` beside it (beside the real file when ``csv`` is a symbolic link, where its rows are:
    ``results_path``)."""
    csv = results_path(csv)
    return csv.with_name(f"{csv.stem}.runs")


def check_writable(csv) -> None:
    """Fail before any training if the rows or their side files could not be written: the
    results folder (created), the CSV, and the side-file folder ``<csv stem>.runs`` (``runs_dir``,
    created; a read-only one would otherwise be found only after every job had trained)."""
    csv = results_path(csv)
    make_folder(csv.parent, what="results folder", fix="pass another --results-csv", error=ResultsError)
    if csv.exists() and not os.access(csv, os.W_OK):
        raise ResultsError(f"results file {str(csv)!r} is read-only; make it writable "
                           "or pass another --results-csv (it was left untouched).")
    side = runs_dir(csv)
    if side.exists() and not side.is_dir():
        raise ResultsError(f"{str(side)!r} is a file, but the results' side files (per-image scores, training "
                           "curves) go in a folder of that name next to the CSV; move the file or pass another "
                           "--results-csv.")
    make_folder(side, what="side-file folder", fix="pass another --results-csv", error=ResultsError)


def _remove_orphan_temps(csv: Path) -> None:
    """Delete temp files of this CSV left by a writer killed mid-write. Called under the lock:
    writers create temp files only while holding it, so any found now is an orphan."""
    if fcntl is None:  # pragma: no cover - no lock, no certainty
        return
    name = re.compile(rf"\.{re.escape(csv.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp's 8 random characters
    for p in csv.parent.glob(f".{glob.escape(csv.name)}.*.tmp"):
        if name.fullmatch(p.name):
            p.unlink(missing_ok=True)


def append_row(csv, row: dict, *, replace: bool = False, write_files: Callable[[], object] | None = None) -> bool:
    """Add ``row`` to the CSV atomically, under the lock; False if its key is already there
    (written meanwhile by another run) and ``replace`` is off. Other rows keep their exact text.

    ``write_files``: writes the files the row refers to (checkpoint, side files). It is called
    under the lock once the row is known to be kept, just before the CSV is written, so a run
    whose row is not kept never replaces the files of the row that is."""
    csv = results_path(csv)
    with _locked(csv):
        _remove_orphan_temps(csv)
        table = read_text_table(csv) if csv.exists() else pd.DataFrame(columns=list(COLUMNS))
        key = [str(row[k]) for k in KEY_COLUMNS]
        present = (table[list(KEY_COLUMNS)] == key).all(axis=1) if len(table) else pd.Series([], dtype=bool)
        if present.any() and not replace:
            return False
        if write_files is not None:
            write_files()
        new = pd.DataFrame([{k: cell_text(v) for k, v in row.items()}], dtype=str)
        columns = _ordered_columns(table.columns, new.columns)
        out = pd.concat([table.loc[~present].reindex(columns=columns, fill_value=""),
                         new.reindex(columns=columns, fill_value="")], ignore_index=True)
        _atomic_write_csv(out, csv)
    return True

