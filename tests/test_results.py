"""Reading the results CSV and its side files as a user may have left them: cells edited by
hand, a renamed column, side files cut short or overwritten (issue 20, items 10 and 17); and the
CSV as the grid writes it (pipeline/results.py): names read as text, older schemas, a corrupt
file left untouched, concurrent writers and writers killed mid-write."""
from __future__ import annotations

import io
import json
import textwrap
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

from helpers import TINY, TRAIN, fake_row, make_tiny_mvtec, run_args, run_grid, spawn_pipeline, tiny_grid
from models.errors import UserError
from pipeline import plots, report, runs, tables
from pipeline.__main__ import main
from pipeline.results import COLUMNS, TEXT_COLUMNS, ResultsError, append_row, check_writable, read_results
from table_helpers import fake_seeds

CATEGORIES = {"carpet": "texture", "bottle": "object"}


def _csv(tmp_path, df: pd.DataFrame):
    csv = tmp_path / "r.csv"
    df.to_csv(csv, index=False)
    return csv


def _edit(csv, edits: dict) -> None:
    """Set cells of the CSV to the given text, as a person would in a spreadsheet:
    {(category, model, seed, column): text}."""
    text = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for (category, model, seed, column), value in edits.items():
        row = (text["category"] == category) & (text["model"] == model) & (text["seed"] == str(seed))
        assert row.sum() == 1
        text.loc[row, column] = value
    text.to_csv(csv, index=False)


def test_a_clean_csv_reads_without_a_word(tmp_path):
    csv = _csv(tmp_path, fake_seeds(2, CATEGORIES, ("cae", "vae")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = read_results(csv)
    assert table["image_auroc"].dtype == float and table["seed"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_text_in_a_numeric_cell_is_named_and_left_out_of_the_means(tmp_path, monkeypatch):
    df = fake_seeds(2, CATEGORIES, ("cae", "vae"))
    csv = _csv(tmp_path, df)
    _edit(csv, {("carpet", "cae", 1, "image_auroc"): "0,95", ("bottle", "vae", 0, "f1"): "n/a",
                ("bottle", "cae", 0, "pixel_auroc"): "95"})  # a percentage: outside [0, 1]
    with pytest.warns(UserWarning) as record:
        table = read_results(csv)
    (message,) = [str(w.message) for w in record]
    for part in ("r.csv", "carpet / cae / seed 1", "image_auroc '0,95'", "bottle / vae / seed 0", "f1 'n/a'",
                 "pixel_auroc '95'", "outside [0, 1]", "left out of the means"):
        assert part in message, part
    assert "\n" not in message
    # Those cells are missing; every other cell of their columns is still a number.
    assert table["image_auroc"].dtype == float and table["image_auroc"].isna().sum() == 1
    assert table["f1"].isna().sum() == 1 and table["pixel_auroc"].isna().sum() == 1
    agg = tables.aggregate_seeds(table).set_index(["category", "model"])
    seed_0 = df[(df["category"] == "carpet") & (df["model"] == "cae") & (df["seed"] == 0)]["image_auroc"].item()
    assert agg.loc[("carpet", "cae"), "image_auroc"] == pytest.approx(seed_0)
    assert agg.loc[("carpet", "cae"), "image_auroc_n"] == 1 and agg.loc[("carpet", "vae"), "image_auroc_n"] == 2
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out_path, **kw: figures.append(fig) or save(fig, out_path, dpi=30))
    plots.roc_auc_comparison(table, tmp_path / "roc.png")
    assert "mean of 1–2 seeds" in figures[-1].get_suptitle()  # was "mean of 2 seeds" over one seed's value


def test_a_seed_cell_that_is_not_a_whole_number_is_named_and_the_figures_still_draw(tmp_path):
    csv = _csv(tmp_path, fake_seeds(2, CATEGORIES, ("cae", "vae")))
    _edit(csv, {("carpet", "cae", 1, "seed"): "one"})
    with pytest.warns(UserWarning, match="seed 'one'"):
        table = read_results(csv)
    assert table["seed"].isna().sum() == 1
    per_image, missing = runs.read_score_sets(table, csv)
    assert not per_image and len(missing) == len(table)
    assert runs.read_curves(table, csv).empty
    assert report.seeds_note(table).startswith("mean ± sd over 2 seeds")
    with pytest.warns(UserWarning, match="seed 'one'"):
        assert main(["plots", "--results-csv", str(csv), "--out", str(tmp_path / "figs")]) == 0  # was: int(NaN)


def test_a_renamed_seed_column_is_one_sentence_naming_the_csv(tmp_path, capsys):
    csv = _csv(tmp_path, fake_seeds(2, CATEGORIES, ("cae", "vae")).rename(columns={"seed": "Seed"}))
    before = csv.read_bytes()
    with pytest.raises(ResultsError) as info:
        read_results(csv)
    message = str(info.value)
    assert "r.csv" in message and "no seed column" in message and "'Seed'" in message and "\n" not in message
    assert main(["plots", "--results-csv", str(csv), "--out", str(tmp_path / "figs")]) == 2
    assert main(["run", "--data-root", str(make_tiny_mvtec(tmp_path / "data", categories=("widget",))),
                 "--models", "cae", "--epochs", "1", "--min-steps", "0", "--image-size", "32",
                 "--results-csv", str(csv), "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "no seed column" in err
    assert csv.read_bytes() == before  # untouched, no row added


# ------------------------------------------------------------------ damaged side files


def _rows_with_side_files(tmp_path):
    """Two models on carpet with every side file (per-image scores, curves, manifest) next to the CSV."""
    df = fake_seeds(1, {"carpet": "texture"}, ("cae", "vae"))
    df["train_hash"] = "t" + df["model"]
    df["data_fingerprint"] = "f0"
    csv = _csv(tmp_path, df)
    folder = runs.runs_dir(csv)
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(6), np.ones(6)].astype(int)
    for _, row in df.iterrows():
        where = dict(dataset=row["dataset"], category=row["category"], model=row["model"])
        pos, neg = rng.integers(0, 9, (12, 8)), rng.integers(0, 9, (12, 8))
        runs.save_scores(runs.scores_path(folder, **where, config_hash=row["config_hash"]), labels=labels,
                         test_scores=rng.normal(size=12) + labels, val_scores=rng.normal(size=4), pixel_pos=pos,
                         pixel_neg=neg)
        runs.save_curves(runs.curves_path(folder, **where, train_hash=row["train_hash"]),
                         {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6]})
    manifest = runs.manifest_path(folder, dataset="demo", category="carpet", fingerprint="f0")
    runs.save_manifest(manifest, {"train/good/000.png": "ab12"})
    return df, csv, folder, manifest


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


DAMAGE = {  # name: (new bytes of the scores file, of the curves file, of the manifest), given the old bytes
    "truncated": lambda old: old[: len(old) // 2],
    "empty": lambda old: b"",
    "garbage": lambda old: bytes(range(256)) * 4,
    "other type": lambda old: b'["a", "list"]' if old[:1] in (b"{", b"[") else b"\x93NUMPY not an npz",
    "wrong keys": lambda old: (json.dumps({"loss": [1, 2]}).encode() if old[:1] == b"{"
                               else _npz(scores=np.zeros(3))),
    "wrong shapes": lambda old: (json.dumps({"epoch": [1, 2, 3], "train_loss": [1.0], "val_loss": [1.0]}).encode()
                                 if old[:1] == b"{" else _npz(labels=np.zeros(5), test_scores=np.zeros(4))),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_side_files_are_left_out_with_a_note(tmp_path, damage):
    df, csv, folder, manifest = _rows_with_side_files(tmp_path)
    scores = next(folder.rglob("cae-*.scores.npz"))
    curves = next(folder.rglob("cae-*.curves.json"))
    for path in (scores, curves, manifest):
        path.write_bytes(DAMAGE[damage](path.read_bytes()))
    table = read_results(csv)
    per_image, missing = runs.read_score_sets(table, csv)
    assert list(per_image) == [("vae", "carpet", 0)]
    (note,) = missing
    assert note.startswith("cae on carpet (seed 0") and "damaged" in note and scores.name in note
    with pytest.warns(UserWarning, match="training curves of cae on carpet .* left out") as record:
        kept = runs.read_curves(table, csv)
    assert curves.name in str(record[0].message) and set(kept["model"]) == {"vae"}
    assert runs.load_manifest(manifest) is None  # only improves a message: treated as absent
    text = report.summary(table, results_csv=csv, n_boot=50)
    assert "Left out (no per-image scores): cae on carpet (seed 0" in text


def test_scores_of_other_test_images_are_left_out_of_the_summary_not_a_traceback(tmp_path):
    """A scores file that reads well but holds other test images than the other models' (copied
    from another run): the paired bootstrap needs the same images, so those rows are left out."""
    df, csv, folder, _ = _rows_with_side_files(tmp_path)
    runs.save_scores(next(folder.rglob("cae-*.scores.npz")), labels=[0, 1, 1], test_scores=[0.1, 0.2, 0.3],
                     val_scores=[0.1])
    text = report.summary(read_results(csv), results_csv=csv, n_boot=50)
    assert "cae on carpet (seed 0; its scores are of other test images" in text


def test_the_side_files_go_in_the_one_folder_that_check_writable_makes(tmp_path):
    """One name for the side-file folder: the one check_writable creates (and refuses when a file
    holds its name) is where runs writes and reads, also through a symbolic link to the CSV."""
    shared = tmp_path / "shared"
    shared.mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(shared / "results.csv")
    check_writable(link)
    assert runs.runs_dir(link) == shared / "results.runs" and runs.runs_dir(link).is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".runs")] == []  # none beside the link


# ---------------------------------------------------------------- the CSV as the grid writes it


@pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py
@pytest.mark.parametrize("root_name, category", [("None", "NA"), ("nan", "null")])
def test_root_and_category_named_like_missing_values_are_names(tmp_path, capsys, root_name, category):
    data = make_tiny_mvtec(tmp_path / root_name, categories=(category,))
    csv = tmp_path / "r.csv"
    assert main(run_args(data, csv, tmp_path, categories=(category,), models=("cae",))) == 0
    out = capsys.readouterr().out
    assert "(no results)" not in out
    assert f"{category} " in out.splitlines()[-1]  # the printed table has the row

    df = read_results(csv)
    assert df["category"].tolist() == [category] and df["dataset"].tolist() == [root_name]
    for c in TEXT_COLUMNS:  # text columns are text: a string, or NaN for an empty cell only
        assert all(isinstance(v, str) for v in df[c].dropna()), c
    assert df["category"].notna().all() and df["dataset"].notna().all()
    assert pd.api.types.is_float_dtype(df["image_auroc"])  # numbers stay numbers
    assert tables.prepare_results(df)["label"].tolist() == [category]  # figures label it by its name

    # The notebook's path: run_grid's table (the next cells' input) has the row, under its name.
    run = run_grid(data, [category], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                        results_csv=csv, checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    assert run["category"].tolist() == [category] and run.attrs["skipped"] == 1
    assert category in report.metric_tables(run).index


def test_results_csv_of_an_older_schema(root, tmp_path):
    """Older columns are kept and missing ones read as NaN (the next test covers the append); a
    file of a schema before config_hash is a clear error, and is never rewritten."""
    old = tmp_path / "old.csv"
    pd.DataFrame([{"dataset": "d", "category": "widget", "model": "cae", "image_auroc": 0.9, "note": "v0"}]).to_csv(
        old, index=False)
    before = old.read_bytes()
    for fn in (lambda: read_results(old), lambda: append_row(old, fake_row()),
               lambda: run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN,
                                           model_overrides=TINY, results_csv=old, log=lambda m: None)):
        with pytest.raises(ResultsError) as info:
            fn()
        assert "no config_hash column" in str(info.value) and "old.csv" in str(info.value)
    assert old.read_bytes() == before


def test_older_schema_is_read_and_no_column_is_dropped(grid_of_four, tmp_path):
    _, csv, _, _ = grid_of_four
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    old = table.drop(columns=["aupro", "peak_memory_mb"]).iloc[:2].assign(legacy_note="kept")
    path = tmp_path / "old.csv"
    old.to_csv(path, index=False)
    df = read_results(path)
    assert df["aupro"].isna().all() and (df["legacy_note"] == "kept").all()
    row = read_results(csv).iloc[3].to_dict()
    assert append_row(path, row)
    assert not append_row(path, row)  # same key: not duplicated
    df = read_results(path)
    assert len(df) == 3 and "legacy_note" in df.columns and "peak_memory_mb" in df.columns
    assert df["aupro"].isna().sum() == 2 and df["aupro"].iloc[2] == pytest.approx(row["aupro"])
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    # the old rows' cells are kept exactly as written (the new columns are empty for them)
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in old.columns:
        assert text[col].iloc[:2].tolist() == old[col].tolist(), col


def test_corrupt_csv_is_an_error_and_left_untouched(tiny_mvtec, tmp_path):
    root = tiny_mvtec
    for content in (b"dataset,category\n\"unterminated,1\n1,2,3,4,5\n", b"\xff\xfe\x00\x01garbage", b"a,b\n1,2\n", b""):
        bad = tmp_path / "bad.csv"
        bad.write_bytes(content)
        with pytest.raises(ResultsError, match="bad.csv"):
            tiny_grid(root, bad, tmp_path)
        with pytest.raises(UserError):
            read_results(bad)
        assert bad.read_bytes() == content


def test_concurrent_appends_lose_and_duplicate_nothing(grid_of_four, tmp_path):
    """Writers holding separate lock-file descriptions (as separate processes do) appending at once."""
    _, csv, _, _ = grid_of_four
    base = read_results(csv).iloc[0].to_dict()
    path = tmp_path / "c.csv"
    errors = []

    def writer(w):
        try:
            for i in range(15):
                append_row(path, {**base, "config_hash": f"w{w}-{i}"})
                append_row(path, {**base, "config_hash": "shared"})  # the same key from every writer
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hashes = read_results(path)["config_hash"].tolist()
    assert sorted(hashes) == sorted([f"w{w}-{i}" for w in range(3) for i in range(15)] + ["shared"])
    assert not list(tmp_path.glob(".c.csv.*.tmp"))  # no temp files left behind


KILL_HARNESS = textwrap.dedent("""
    import json, os, random, signal, sys, time
    from pathlib import Path
    import pipeline.results
    csv, rounds, rng = Path(sys.argv[1]), int(sys.argv[2]), random.Random(int(sys.argv[3]))
    base = json.loads(sys.argv[4])

    def writer():  # appends r00000, r00001, ... skipping rows already there (= resuming)
        try:
            for i in range(100000):
                pipeline.results.append_row(csv, {**base, "config_hash": f"r{i:05d}"})
        finally:
            os._exit(0)

    history = []
    for r in range(rounds):
        pids = []
        for _ in range(2):  # two writers at once, each its own process
            pid = os.fork()
            if pid == 0:
                writer()
            pids.append(pid)
        time.sleep(rng.uniform(0.03, 0.2))
        sig = signal.SIGKILL if r % 3 else signal.SIGINT  # every third round: Ctrl-C instead
        for pid in pids:
            os.kill(pid, sig)
        for pid in pids:
            os.waitpid(pid, 0)
        df = pipeline.results.read_results(csv) if csv.exists() else None
        hashes = [] if df is None else df["config_hash"].tolist()
        history.append({"signal": int(sig), "n": len(hashes),
                        "contiguous": hashes == [f"r{i:05d}" for i in range(len(hashes))],
                        "cells_intact": df is None or set(df["config_json"]) == {base["config_json"]},
                        "temps": len(list(csv.parent.glob("." + csv.name + ".*.tmp")))})
    print(json.dumps(history))
""")


@pytest.mark.slow  # a real process, which forks the writers it kills
def test_sigkill_or_ctrl_c_at_random_points_of_concurrent_writes(tmp_path):
    """Two writer processes append rows to one CSV and are killed (SIGKILL, or SIGINT) at
    random moments, 12 times; after every kill the CSV reads, its rows are exactly r0..rN in
    order (none lost, none duplicated, cells intact), and the next round resumes after them."""
    csv = tmp_path / "r.csv"
    base = fake_row()
    proc = spawn_pipeline([str(csv), "12", "0", json.dumps(base)], code=KILL_HARNESS)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    history = json.loads(out.strip().splitlines()[-1])
    assert all(h["contiguous"] and h["cells_intact"] for h in history), history
    counts = [h["n"] for h in history]
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0, counts  # never shrinks, resumes, grows
    # A kill between creating the temp file and renaming it leaves a hidden temp file (never a
    # damaged CSV); the next writer, under the lock, removes it, so at most one is ever left.
    assert max(h["temps"] for h in history) <= 1, history
    other = tmp_path / ".r.csv.bak.abcdefgh.tmp"  # another CSV's temp file: not ours to remove
    other.write_text("x")
    append_row(csv, fake_row(config_hash="last"))
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [other.name]
