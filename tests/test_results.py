"""Reading the results CSV and its side files as a user may have left them: cells edited by
hand, a renamed column, side files cut short or overwritten (issue 20, items 10 and 17)."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from test_plots import fake_seeds

from helpers import make_tiny_mvtec
from pipeline import plots, report, runs
from pipeline.__main__ import main
from pipeline.results import ResultsError, read_results

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
    agg = plots.aggregate_seeds(table).set_index(["category", "model"])
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
    per_image, missing = runs.read_runs(table, csv)
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
                 "--models", "cae", "--epochs", "1", "--image-size", "32", "--results-csv", str(csv),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]) == 2
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
    per_image, missing = runs.read_runs(table, csv)
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
