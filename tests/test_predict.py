"""``predict`` (pipeline/predict.py): a trained tiny job on images gives the row's own scores and
verdicts, heatmaps at each image's size and aspect, and one sentence for every bad input; the
user's images are never written over or beside."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY, one_error_line
from models.errors import ConfigError
from models.mvtec.decode import decode_image
from pipeline import image_files, metrics, predict, runs, trained
from pipeline.__main__ import main

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


@pytest.fixture(scope="module")
def jobs(grid_of_four):
    """The four tiny trained jobs of conftest's grid, by model name."""
    _, csv_path, _, tmp = grid_of_four
    return {name: trained.load_trained(csv_path, category="widget", model=name, checkpoint_dir=tmp / "ck")
            for name in TINY}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_on_the_test_images_gives_the_rows_scores_and_verdicts_exactly(grid_of_four, jobs, tmp_path):
    root, csv_path, df, _ = grid_of_four
    test = root / "widget" / "test"
    images = image_files.find_images([test])
    for name, job in jobs.items():
        run = predict.predict_images(job, images, tmp_path / name, progress=False)
        side = np.load(runs.scores_path(runs.runs_dir(csv_path), dataset=job.dataset, category="widget", model=name,
                                        config_hash=job.config_hash))
        order = {p: i for i, p in enumerate(side["test_paths"])}
        index = [order[p.path.relative_to(test.parent).as_posix()] for p in run.predictions]
        assert len(index) == len(order) == 6
        scores = np.array([p.score for p in run.predictions], dtype=np.float32)
        np.testing.assert_array_equal(scores, side["test_scores"][index])  # bit for bit
        row = df[df["model"] == name].iloc[0]
        defective = [p.verdict == "defective" for p in run.predictions]
        assert defective == [s > row["threshold"] for s in scores] and {p.verdict for p in run.predictions} <= {
            "defective", "good"}
        labels = side["labels"][index]
        assert metrics.f1_at_threshold(labels, scores, row["threshold"])["f1"] == pytest.approx(row["f1"])
        lines = read_csv(tmp_path / name / "predictions.csv")
        assert list(lines[0]) == list(predict.COLUMNS) and [r["path"] for r in lines] == [str(p) for p in images]
        assert [float(r["score"]) for r in lines] == [p.score for p in run.predictions]
        assert {float(r["threshold"]) for r in lines} == {row["threshold"]}
        assert all(float(r["map_max"]) >= float(r["score"]) for r in lines)
        for r in lines:
            with Image.open(tmp_path / name / r["heatmap"]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
        assert run.summary().startswith(f"6 images: {sum(defective)} defective at threshold {row['threshold']:.6g} "
                                        f"({name} on 'widget'")
        assert ", 0 failed; " in run.summary()


def write_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of other sizes, aspects and modes than the tiny job's 32 x 32 RGB: name -> upright (w, h)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "wide.png")  # 40 x 24
    Image.fromarray(rgb[:, :20, 0]).save(folder / "gray.png")  # 20 x 24, L
    Image.fromarray((rng.integers(0, 65536, (50, 30))).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 x 24, shown turned a quarter: 24 x 40
    Image.fromarray(rgb).save(folder / "turned.jpg", exif=exif)
    return {"wide.png": (40, 24), "gray.png": (20, 24), "sixteen.png": (30, 50), "alpha.png": (40, 24),
            "turned.jpg": (24, 40)}


@pytest.mark.filterwarnings("ignore:1 of 1 images was resized")
def test_heatmaps_have_each_images_own_size_and_odd_images_are_read_as_in_training(jobs, tmp_path):
    sizes = write_odd_images(tmp_path / "in")
    job = jobs["cae"]
    images = image_files.find_images([tmp_path / "in"])
    with pytest.warns(UserWarning, match=r"4 of 5 images were resized to 32 x 32 px .* away from their own aspect"):
        run = predict.predict_images(job, images, tmp_path / "out", progress=False)
    assert not run.failed
    for p in run.predictions:
        with Image.open(tmp_path / "out" / p.heatmap) as im:
            assert im.size == sizes[p.path.name], p.path
        pixels = decode_image(p.path, 32, 3).array  # the training's decoding of that file
        alone = predict.predict_images(job, [p.path], tmp_path / "one", write_heatmaps=False, progress=False)
        x = job.model.anomaly_score(torch.from_numpy(pixels[None]).float() / 255, job.eval_config.score)
        assert alone.predictions[0].score == pytest.approx(float(x[0]), abs=1e-6) == pytest.approx(p.score, abs=1e-6)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_decoding_once_at_the_images_size_gives_decode_images_pixels(tmp_path, in_channels, monkeypatch):
    """predict decodes a file once (its heatmap needs it at its own size) and resizes from there:
    the model's pixels must be exactly those the training decoded (models/mvtec/decode.py)."""
    folder = tmp_path / "in"
    write_odd_images(folder)
    rng = np.random.default_rng(1)
    for mode in ("P", "1", "LA", "CMYK", "I", "F"):
        im = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
        im = {"I": Image.fromarray(rng.integers(0, 65536, (37, 53)).astype(np.int32)),
              "F": Image.fromarray(rng.random((37, 53)).astype(np.float32))}.get(mode, im)
        im.convert(mode).save(folder / f"{mode}.{'tif' if mode in ('CMYK', 'I', 'F') else 'png'}")
    for path in sorted(folder.iterdir()):
        for size in (32, (24, 40), (17, 23)):
            got = predict.decode_for_prediction(path, size, in_channels)
            want = decode_image(path, size, in_channels)
            np.testing.assert_array_equal(got.pixels, want.array, err_msg=f"{path.name} at {size}")
            assert got.original_size == want.original_size and got.image.shape[1:] == want.original_size[::-1]
    monkeypatch.setattr(predict, "HUGE_PIXELS", 100)  # the path of huge images: decoded at the model's size
    got = predict.decode_for_prediction(folder / "wide.png", 16, in_channels)
    np.testing.assert_array_equal(got.pixels, decode_image(folder / "wide.png", 16, in_channels).array)
    assert got.image.shape == (3, 24, 40)


def test_an_unreadable_image_is_named_and_counted_and_the_others_are_predicted(grid_of_four, tmp_path, capsys):
    root, csv_path, _, tmp = grid_of_four
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((root / "widget" / "test" / "good").iterdir())
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "cut.png").write_bytes(good[0].read_bytes()[:200])  # truncated
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not an input")
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as said:  # on the command line: "warning: ..." lines on stderr
        code = main(["predict", "--results-csv", str(csv_path), "--category", "widget", "--model", "cae",
                     "--checkpoint-dir", str(tmp / "ck"), "--out", str(out), "--no-progress", str(folder)])
    printed = capsys.readouterr().out
    assert code == 1
    assert "4 images: " in printed and ", 2 failed; " in printed and str(out / "predictions.csv") in printed
    notes = [str(w.message) for w in said if str(w.message).startswith("left out: ")]
    assert len(notes) == 2 and "cut.png" in notes[0] and "damaged or truncated" in notes[0]
    assert "empty.png is empty (0 bytes)" in notes[1]
    lines = {Path(r["path"]).name: r for r in read_csv(out / "predictions.csv")}
    assert set(lines) == {"000.png", "001.png", "cut.png", "empty.png"}
    assert lines["cut.png"]["verdict"] == "failed" and lines["cut.png"]["score"] == "" and lines["cut.png"]["error"]
    assert lines["000.png"]["verdict"] in ("good", "defective") and (out / lines["000.png"]["heatmap"]).is_file()
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["000.png", "001.png"]


@pytest.mark.parametrize("inputs, message", [
    (["{tmp}/nowhere.png"], "image or folder '{tmp}/nowhere.png' does not exist; check the path."),
    (["{tmp}/empty"], "folder '{tmp}/empty' holds no image files"),
    (["{tmp}/empty/*.png"], "no file matches '{tmp}/empty/*.png'; check the pattern"),
])
def test_no_images_found_exits_2_with_one_sentence(grid_of_four, tmp_path, capsys, inputs, message):
    _, csv_path, _, tmp = grid_of_four
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    args = [a.replace("{tmp}", str(tmp_path)) for a in inputs]
    assert main(["predict", "--results-csv", str(csv_path), "--category", "widget", "--model", "cae",
                 "--checkpoint-dir", str(tmp / "ck"), "--out", str(tmp_path / "out"), *args]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_the_output_never_goes_into_or_over_the_users_images(grid_of_four, tmp_path, capsys):
    root, csv_path, _, tmp = grid_of_four
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    image = sorted((root / "widget" / "test" / "good").iterdir())[0]
    (folder / "a" / "x.png").write_bytes(image.read_bytes())
    base = ["predict", "--results-csv", str(csv_path), "--category", "widget", "--model", "cae",
            "--checkpoint-dir", str(tmp / "ck"), "--no-progress"]
    before = {p: p.read_bytes() for p in folder.rglob("*.png")}
    for out, inputs, message in [
        (folder, [folder], "is the input folder"),
        (folder / "a" / "preds", [folder], "is inside the input folder"),
        (folder / "a", [folder / "a" / "x.png"], "is the folder of the input image"),  # beside the image given
        (tmp_path / "file.txt" / "out", [folder], "cannot create the output folder"),
    ]:
        (tmp_path / "file.txt").write_text("in the way")
        assert main([*base, "--out", str(out), *map(str, inputs)]) == 2
        assert message in one_error_line(capsys.readouterr().err), out
    assert {p: p.read_bytes() for p in folder.rglob("*.png")} == before and not (folder / "a" / "preds").exists()

    # --allow-inside: written there, the files already under it are not inputs, and no input is ever written over.
    out = folder / "preds"
    for _ in range(2):
        assert main([*base, "--allow-inside", "--out", str(out), str(folder)]) == 0
        assert [r["path"] for r in read_csv(out / "predictions.csv")] == [str(folder / "a" / "x.png")]
        assert "1 images: " in capsys.readouterr().out
    heatmap = out / "heatmaps" / "x.png"
    assert heatmap.is_file() and {p: p.read_bytes() for p in folder.rglob("*.png") if p != heatmap} == before
    shown = heatmap.read_bytes()
    assert main([*base, "--allow-inside", "--out", str(out), str(heatmap)]) == 2  # its heatmap would replace it
    assert "would write" in one_error_line(capsys.readouterr().err) and heatmap.read_bytes() == shown


def test_a_colour_image_for_a_gray_model_is_said_once(tmp_path):
    folder = tmp_path / "in"
    write_odd_images(folder)
    odd = predict.Oddities()
    for name in ("wide.png", "gray.png", "alpha.png"):
        odd.look_at(folder / name, predict.decode_for_prediction(folder / name, 32, 1), 32, 1)
    notes = odd.notes(3, 32)
    assert len(notes) == 2 and notes[1].startswith(f"2 colour images (first: {folder / 'wide.png'}) were read in gray")


def test_show_predictions_draws_a_few_heatmaps_from_low_to_high(jobs, grid_of_four, tmp_path):
    root = grid_of_four[0]
    run = predict.predict_images(jobs["vae"], image_files.find_images([root / "widget" / "test"]), tmp_path,
                                 progress=False)
    fig = predict.show_predictions(tmp_path, n=4)
    titles = [ax.get_title() for ax in fig.axes]
    lowest = min(run.predictions, key=lambda p: p.score)
    assert len(titles) == 4 and titles[0].startswith(lowest.path.name) and titles[0].endswith(lowest.verdict)


def test_predict_inputs_checks_the_output_folder_first(jobs, grid_of_four, tmp_path):
    test = grid_of_four[0] / "widget" / "test"
    with pytest.raises(ConfigError, match="is inside the input folder"):
        predict.predict_inputs(jobs["cae"], [test.parent], test / "out")
    run = predict.predict_inputs(jobs["cae"], [test], tmp_path / "out", write_heatmaps=False, progress=False)
    assert len(run.predictions) == 6 and not (tmp_path / "out" / "heatmaps").exists()
