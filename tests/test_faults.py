"""Fault suite (issue 8): messy data, bad parameters, diverging training, interrupted and
concurrent runs, unwritable results, unsafe checkpoints. docs/faults.md maps every case to
its behaviour and to the test that proves it (here, or in test_data / test_cli /
test_experiment / test_training where the case was already covered).

In-process where possible; a real process only where the case needs one (SIGINT, SIGKILL,
two runs at once, a file-size limit on writes).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import models
import pipeline.checkpoints
import pipeline.evaluate
import pipeline.grid
import pipeline.job
import pipeline.results
import pipeline.runs
from helpers import SLOW_EPOCHS_CLI, make_tiny_mvtec
from models import mvtec
from models.errors import CheckpointError, DatasetError
from pipeline.__main__ import main
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.results import KEY_COLUMNS, ResultsError, append_row, read_results
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_SET = ["--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16",
            "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16",
            "--set", "vit_vae.patch_size=8", "--set", "vit_vae.dim=16", "--set", "vit_vae.depth=1",
            "--set", "vit_vae.heads=2"]
TINY = {"cae": {"widths": (8, 16), "latent_dim": 16}, "vae": {"widths": (8, 16), "latent_dim": 16}}
TRAIN = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1)


pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_mvtec(tmp_path_factory.mktemp("faults_data"), categories=("widget",))


def run_args(root, csv, tmp, *extra, categories=("widget",)):
    return ["run", "--data-root", str(root), "--categories", *categories, "--image-size", "32", "--epochs", "1",
            "--batch-size", "4", "--results-csv", str(csv), "--checkpoint-dir", str(tmp / "ck"), "--no-progress",
            "--num-threads", "1", *TINY_SET, *extra]


def one_error_line(err: str) -> str:
    """stderr of a refused command: exactly one line, 'error: ...', no traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def spawn(args, *, env=None, code=None, epoch_sleep: float = 0):
    """A real `python -m pipeline ...` process (or `python -c code args`), 1 thread, repo on the path;
    with ``epoch_sleep`` each training epoch sleeps that long (helpers.SLOW_EPOCHS_CLI)."""
    if epoch_sleep:
        code, args = SLOW_EPOCHS_CLI, [str(epoch_sleep), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "pipeline", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)


def _default_signals():
    """Give the child the default SIGINT, SIGTERM and SIGHUP dispositions. A test run started in
    the background of a non-interactive shell (CI, nohup) inherits SIGINT (and under nohup SIGHUP)
    *ignored*, and Python then installs no KeyboardInterrupt handler, so a real Ctrl-C would never
    reach the code under test."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def fake_row(**kw) -> dict:
    """A complete results row without training (for CSV tests)."""
    row = {c: "" for c in pipeline.results.COLUMNS + pipeline.results.EXTRA_COLUMNS}
    row.update(dataset="d", category="widget", category_type="custom", model="cae", image_auroc=0.75,
               pixel_auroc=0.5, aupro=0.25, f1=0.5, precision=0.5, recall=0.5, f1_max=0.8, threshold=0.1,
               threshold_rule="val_max", score="mean", epochs=1, image_size=32, seed=0, train_seconds=1.0,
               infer_ms_per_image=1.0, params=10, config_hash="h0", config_json=json.dumps({"a": [1, "x,y"]}))
    row.update(kw)
    return row


# ============================================================================ dataset


def test_messy_grid_bad_categories_fail_alone_and_the_rest_finish(tmp_path, capsys):
    """One grid over four categories: a non-ASCII name with spaces (works), no defective test
    images (works: image AUROC NaN + warning), no train images and a zero-byte PNG (each fails
    in one sentence naming the file); exit 1, the good rows written; a batch larger than the
    train split is clamped."""
    good = "wïdget 1"
    make_tiny_mvtec(tmp_path / "data", categories=(good, "no_train", "broken"), gray_categories=())
    make_tiny_mvtec(tmp_path / "data", categories=("no_defects",), defects=(), n_test_good=3)
    root = tmp_path / "data"
    for f in (root / "no_train" / "train" / "good").iterdir():
        f.unlink()
    zero = root / "broken" / "test" / "hole" / "000.png"
    zero.write_bytes(b"")
    # a defective image (and its mask) whose names hold spaces and non-ASCII characters
    d = root / good
    (d / "test" / "hole" / "000.png").rename(d / "test" / "hole" / "trou n°1 画像.png")
    (d / "ground_truth" / "hole" / "000_mask.png").rename(d / "ground_truth" / "hole" / "trou n°1 画像_mask.png")

    csv = tmp_path / "r.csv"
    cats = (good, "no_defects", "no_train", "broken")
    with pytest.warns(UserWarning) as record:
        rc = main(run_args(root, csv, tmp_path, "--models", "cae", "--batch-size", "64", categories=cats))
    assert rc == 1
    messages = [str(w.message) for w in record]
    assert any("image AUROC is undefined" in m for m in messages)
    assert any("batch_size 64 is larger than the 7 training images" in m for m in messages)
    out, err = capsys.readouterr()
    assert "2 job(s) failed" in err and "Traceback" not in err
    failed = {line.split(":")[0].strip(): line for line in err.splitlines() if line.startswith("  ")}
    assert set(failed) == {"cae on no_train", "cae on broken"}
    assert "no training images" in failed["cae on no_train"]
    assert str(zero) in failed["cae on broken"] and "0 bytes" in failed["cae on broken"]

    table = read_results(csv).set_index("category")
    assert sorted(table.index) == sorted([good, "no_defects"])  # the name round-trips exactly
    assert 0 <= table.loc[good, "image_auroc"] <= 1 and table.loc[good, "batch_size"] == 7
    nd = table.loc["no_defects"]
    assert np.isnan(nd["image_auroc"]) and np.isnan(nd["f1"]) and np.isnan(nd["pixel_auroc"])
    assert nd["n_test"] == 3
    ckpt = tmp_path / "ck" / mvtec.dataset_name(root) / "wïdget_1"  # the space made file-system-safe
    assert len(list(ckpt.glob("cae-*.pt"))) == 1


def test_empty_root_or_a_category_given_as_root_exit_2(root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--data-root", str(tmp_path / "empty"), "--results-csv", str(tmp_path / "r.csv")]) == 2
    assert "no category folders" in one_error_line(capsys.readouterr().err)
    assert main(["run", "--data-root", str(root / "widget"), "--results-csv", str(tmp_path / "r.csv")]) == 2
    assert f"pass its parent folder {root}" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r.csv").exists()


def _save_mode(a: np.ndarray, mode: str, path: Path) -> None:
    """Save uint8 array ``a`` (H, W, 3) in PIL mode ``mode``."""
    if mode == "I;16":
        Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(path)
    elif mode == "P":
        Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    else:
        Image.fromarray(a).convert(mode).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith(mode[0]), (mode, im.mode)


def test_test_split_of_mixed_sizes_and_modes_with_masks(tmp_path):
    """Defective test images of five modes and five sizes, each with a mask of its own size:
    decoded to one shape, masks aligned to their images."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, defects=())
    cat = root / "widget"
    sizes = {"L": (40, 30), "RGB": (64, 64), "RGBA": (33, 47), "P": (20, 20), "I;16": (50, 25)}
    for name, (w, h) in sizes.items():
        a = np.full((h, w, 3), 40, np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 255
        a[mask > 0] = 230
        stem = f"mode {name.replace(';', '_')}"
        (cat / "test" / "bad").mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / "bad").mkdir(parents=True, exist_ok=True)
        _save_mode(a, name, cat / "test" / "bad" / f"{stem}.png")
        Image.fromarray(mask).save(cat / "ground_truth" / "bad" / f"{stem}_mask.png")
    for channels in (3, 1):
        ds = models.MVTecAD(root, "widget", "test", image_size=16, in_channels=channels)
        assert ds.images.shape == (7, channels, 16, 16) and ds.has_masks
        bad = ds.labels == 1
        assert int(bad.sum()) == 5
        for img, m in zip(ds.images[bad], ds.masks[bad]):
            assert m.any() and m.float().mean() < 0.5
            inside, outside = img[:, m.bool()].float().mean(), img[:, ~m.bool()].float().mean()
            assert inside > 150 > 80 > outside, (inside, outside)  # mask lies on the bright square


def _png_header(path: Path, width: int, height: int) -> None:
    """A 1x1 grayscale PNG whose header claims ``width`` x ``height`` (cheap to write)."""
    import io

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)  # IHDR data follows the 8-byte signature + length + type
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    path.write_bytes(bytes(b))


def test_very_large_image_and_decompression_bomb(tmp_path):
    """A 5000 x 5000 defective image with its 5000 x 5000 mask works (reduced while decoding,
    sizes still compared at full size); a header claiming 20000 x 20000 is refused by PIL's
    decompression-bomb limit, in one sentence naming the file."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, defects=("hole",), n_per_defect=1)
    big = root / "widget" / "test" / "hole" / "000.png"
    a = np.full((5000, 5000, 3), 60, np.uint8)
    a[:, 2500:] = 200
    Image.fromarray(a).save(big, compress_level=1)
    mask = np.zeros((5000, 5000), np.uint8)
    mask[:, 2500:] = 255
    Image.fromarray(mask).save(root / "widget" / "ground_truth" / "hole" / "000_mask.png", compress_level=1)
    del a, mask
    im, size = mvtec._open(big, reduce_to=(32, 32))
    assert size == (5000, 5000) and max(im.size) <= 5000 // 2 and min(im.size) >= 64  # box-reduced, not full size
    ds = models.MVTecAD(root, "widget", "test", image_size=32)
    i = ds.paths.index(str(big))
    assert ds.images[i, :, :, :15].float().mean() == pytest.approx(60, abs=1)
    assert ds.images[i, :, :, 17:].float().mean() == pytest.approx(200, abs=1)
    assert ds.masks[i, :, 17:].all() and not ds.masks[i, :, :15].any()

    bomb = root / "widget" / "train" / "good" / "bomb.png"
    _png_header(bomb, 20000, 20000)
    assert 20000 * 20000 > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(DatasetError) as info:
        models.MVTecAD(root, "widget", "train", image_size=32)
    msg = str(info.value)
    assert str(bomb) in msg and "MAX_IMAGE_PIXELS" in msg and "\n" not in msg


# ============================================================================ parameters


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "36", "--models", "vit_vae"], "not a multiple of patch_size 8"),
    (["--image-size", "34", "--models", "cae"], "not a multiple of 4"),
    (["--image-size", "0"], "image_size must be at least 16"),
    (["--epochs", "-3"], "epochs must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--models", "cae", "--set", "cae.image_size=64"], "cae.image_size cannot be overridden"),
    (["--models", "cae", "--set", "cae.latent_dim=1.5"], "latent_dim must be a whole number"),
    (["--models", "cae", "--set", "cae.widths=abc"], "widths must be a list of whole numbers"),
])
def test_bad_parameters_exit_2_before_any_work(root, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data read for a bad parameter"))
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, *extra)) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "ck").exists()


# ============================================================================ training


def test_training_that_diverges_in_its_last_step_fails_that_job_only(root, tmp_path, monkeypatch):
    """The loss stays finite but the last optimiser step makes the weights NaN (NaN gradient):
    the job fails with a TrainingError sentence, the next model still runs and is written."""
    real = models.MODELS["cae"].loss
    steps = {"n": 0}

    def loss_with_nan_gradient_at_step_2(self, x):
        out = real(self, x)
        if self.training and x.device.type != "meta":  # not the memory estimate's pass (pipeline/memory.py)
            steps["n"] += 1
            if steps["n"] == 2:  # 7 train images, batch 4 -> 2 steps: the last one
                p = next(self.parameters())
                out["loss"] = out["loss"] + torch.sqrt(p.sum() * 0.0)  # value 0, gradient NaN
        return out

    monkeypatch.setattr(models.MODELS["cae"], "loss", loss_with_nan_gradient_at_step_2)
    logs = []
    df = pipeline.grid.run_grid(root, ["widget"], ["cae", "vae"], image_size=32, train=TRAIN, model_overrides=TINY,
                             results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck", log=logs.append)
    (failure,) = df.attrs["failures"]
    assert failure["model"] == "cae" and "traceback" not in failure  # a TrainingError, not a crash
    assert "NaN or infinite anomaly maps" in failure["error"] and "'widget'" in failure["error"]
    assert list(df["model"]) == ["vae"] and list(read_results(tmp_path / "r.csv")["model"]) == ["vae"]


# ============================================================================ results


@pytest.mark.parametrize("sig, status, said", [
    (signal.SIGINT, 130, "interrupted; finished rows are kept in"),  # Ctrl-C
    (signal.SIGTERM, 143, "stopped by SIGTERM; finished rows are kept in"),  # a scheduler's stop, `kill`
], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_a_real_run_ends_it_with_one_line_and_keeps_finished_rows(root, tmp_path, sig, status, said):
    """A real SIGINT or SIGTERM while a job trains: its exit status with one line, the CSV's
    earlier rows byte-identical."""
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())  # a row finished by an earlier run
    before = csv.read_bytes()
    proc = spawn(run_args(root, csv, tmp_path, "--models", "cae"), epoch_sleep=2)
    try:
        for line in proc.stdout:
            if line.startswith("[1/1] cae on widget"):
                break
        else:
            pytest.fail(f"the job never started: {proc.stderr.read()}")
        proc.send_signal(sig)  # while the job trains (it sleeps 2 s after its epoch)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert said in err and "Traceback" not in err
    assert csv.read_bytes() == before and not list(tmp_path.glob(".r.csv.*.tmp"))


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


def test_sigkill_or_ctrl_c_at_random_points_of_concurrent_writes(tmp_path):
    """Two writer processes append rows to one CSV and are killed (SIGKILL, or SIGINT) at
    random moments, 12 times; after every kill the CSV reads, its rows are exactly r0..rN in
    order (none lost, none duplicated, cells intact), and the next round resumes after them."""
    csv = tmp_path / "r.csv"
    base = fake_row()
    proc = spawn([str(csv), "12", "0", json.dumps(base)], code=KILL_HARNESS)
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


def test_two_run_processes_on_one_csv_lose_and_duplicate_nothing(root, tmp_path):
    """Two real `run` processes, the same two jobs in opposite orders, one CSV: both exit 0,
    the CSV holds each job once (the later writer keeps the row already there)."""
    csv = tmp_path / "r.csv"
    # Started together, each decides both jobs are to do; whichever finishes a job second
    # finds its row written and keeps it (or, if the other was quicker, skips it at the start).
    procs = [spawn(run_args(root, csv, tmp_path, "--models", *order)) for order in (("cae", "vae"), ("vae", "cae"))]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            p.kill()
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    table = read_results(csv)
    assert sorted(table["model"]) == ["cae", "vae"] and table["config_hash"].is_unique
    assert not list(tmp_path.glob(".r.csv.*.tmp"))


FSIZE_HARNESS = textwrap.dedent("""
    import resource, signal, sys
    import pipeline.grid
    import pipeline.results
    from models import build_model
    from pipeline.__main__ import main
    from models.errors import UserError
    from pipeline.checkpoints import save_checkpoint
    from pipeline.job import JobOutput

    def fake_job(spec, data=None, **kw):  # a finished job whose row is larger than the limit allows
        row = {**dict(zip(pipeline.results.KEY_COLUMNS, spec.key())), "image_auroc": 0.5, "train_seconds": 1.0,
               "config_json": "x" * 5000}
        return JobOutput(row=row, checkpoint=None, evaluation=None, history=None)

    pipeline.grid.compute_job = fake_job
    pipeline.grid.write_output = lambda *a, **k: []  # no side files: the CSV write is what fails
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint(sys.argv[2], build_model("cae", image_size=32, widths=(8, 16), latent_dim=16), name="cae")
    except UserError as e:
        print("CHECKPOINT:", e)
    sys.exit(main(sys.argv[3:]))
""")


def test_a_write_that_fails_midway_keeps_the_old_csv(root, tmp_path):
    """A real write failure that root cannot bypass: a file-size limit (as a full disk) makes
    the checkpoint and the CSV writes fail; each is one sentence, the old CSV stays byte-identical,
    no temp file is left, exit 2."""
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())
    before = csv.read_bytes()
    ck = tmp_path / "ck" / "x.pt"
    proc = spawn([str(len(before) + 2000), str(ck), *run_args(root, csv, tmp_path, "--models", "cae")],
                 code=FSIZE_HARNESS)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "CHECKPOINT: cannot write the checkpoint" in out and "--checkpoint-dir" in out
    line = one_error_line(err)
    assert "cannot write results to" in line and "File too large" in line and "left as it was" in line
    assert csv.read_bytes() == before and not ck.exists()
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


def test_results_or_checkpoint_location_that_cannot_be_written(root, tmp_path, capsys, monkeypatch):
    """A results path under a file, a results path that is a folder, a checkpoint folder under
    a file, a figures folder under a file: exit 2, one sentence, before any training; an
    existing CSV is left untouched."""
    monkeypatch.setattr(pipeline.grid, "load_category",
                        lambda *a, **k: pytest.fail("trained despite an unwritable path"))
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file")
    folder = tmp_path / "a_folder.csv"
    folder.mkdir()
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())
    before = csv.read_bytes()
    cases = [
        (run_args(root, blocker / "r.csv", tmp_path), "cannot create the results folder"),
        (run_args(root, folder, tmp_path), "cannot be read"),
        (run_args(root, csv, tmp_path, "--checkpoint-dir", str(blocker / "ck")), "cannot create the checkpoint folder"),
        (["plots", "--results-csv", str(csv), "--out", str(blocker / "figs")], "cannot access"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert message in line and ("a_file" in line or "a_folder" in line), line
    assert csv.read_bytes() == before and blocker.read_text() == "I am a file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_results_file_and_folder(root, tmp_path, capsys):
    csv = tmp_path / "ro" / "r.csv"
    csv.parent.mkdir()
    append_row(csv, fake_row())
    before = csv.read_bytes()
    csv.chmod(0o444)
    assert main(run_args(root, csv, tmp_path)) == 2
    assert "read-only" in one_error_line(capsys.readouterr().err)
    csv.chmod(0o644)
    csv.parent.chmod(0o555)
    try:
        assert main(run_args(root, csv, tmp_path)) == 2
        assert "not writable" in one_error_line(capsys.readouterr().err)
    finally:
        csv.parent.chmod(0o755)
    assert csv.read_bytes() == before


def test_results_csv_of_an_older_schema(root, tmp_path):
    """Older columns are kept and missing ones read as NaN (test_experiment covers the append);
    a file of a schema before config_hash is a clear error, and is never rewritten."""
    old = tmp_path / "old.csv"
    pd.DataFrame([{"dataset": "d", "category": "widget", "model": "cae", "image_auroc": 0.9, "note": "v0"}]).to_csv(
        old, index=False)
    before = old.read_bytes()
    for fn in (lambda: read_results(old), lambda: append_row(old, fake_row()),
               lambda: pipeline.grid.run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN,
                                           model_overrides=TINY, results_csv=old, log=lambda m: None)):
        with pytest.raises(ResultsError) as info:
            fn()
        assert "no config_hash column" in str(info.value) and "old.csv" in str(info.value)
    assert old.read_bytes() == before


# ============================================================================ checkpoints


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refusals_beyond_the_basics(tmp_path):
    """test_training covers: not a checkpoint, another model, another config, a raw code-running
    pickle. Here: the usual torch.save (zip) form of a code-running file, a truncated
    checkpoint, a tampered state_dict, another image size."""
    m = models.build_model("cae", image_size=32, **TINY["cae"])
    good = save_checkpoint(tmp_path / "good.pt", m, name="cae")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": "cae", "config": m.config.to_dict(), "state_dict": {}, "row": Evil()}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    assert not marker.exists()

    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(cut)

    payload = torch.load(good, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = torch.zeros(3)
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match="does not match the cae model"):
        load_checkpoint(tampered)

    with pytest.raises(CheckpointError, match=r"different cae config: image_size=32 \(expected 64\)"):
        load_checkpoint(good, config=models.model_config("cae", image_size=64, **TINY["cae"]))


# ============================================================================ runs that share files (issue 20)


def other_runs_files(spec, csv, checkpoint_dir) -> dict:
    """Play another run of the same job that finished first: it wrote its checkpoint, side files
    and row. Returns {path: bytes} of its files, which must be left as they are."""
    folder = pipeline.runs.runs_dir(csv)
    where = dict(dataset=spec.dataset, category=spec.category, model=spec.model)
    files = {spec.checkpoint_path(checkpoint_dir): b"their checkpoint",
             pipeline.runs.scores_path(folder, **where, config_hash=spec.config_hash()): b"their scores",
             pipeline.runs.curves_path(folder, **where, train_hash=spec.train_hash()): b"their curves"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    append_row(csv, fake_row(**dict(zip(KEY_COLUMNS, spec.key())), train_hash=spec.train_hash(),
                             finished_at="theirs"))
    return files


def test_a_row_another_run_wrote_meanwhile_keeps_that_runs_checkpoint_and_side_files(root, tmp_path, capsys,
                                                                                     monkeypatch):
    """Two runs of one job at once: the other writes its row while this one computes; this run
    keeps their row and writes none of its own files over theirs (test_ray.py: the same on Ray)."""
    csv, theirs = tmp_path / "r.csv", {}
    real = pipeline.job.train_and_evaluate

    def other_run_finishes_first(spec, data, **kw):
        result = real(spec, data, **kw)
        theirs.update(other_runs_files(spec, csv, tmp_path / "ck"))
        return result

    monkeypatch.setattr(pipeline.job, "train_and_evaluate", other_run_finishes_first)
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    assert "another run wrote this row meanwhile; kept theirs" in capsys.readouterr().out
    assert read_results(csv)["finished_at"].tolist() == ["theirs"]
    assert len(theirs) == 3 and {path: path.read_bytes() for path in theirs} == theirs
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


def read_only(monkeypatch, *folders) -> None:
    """Make ``folders`` (and what is under them) read-only as a read-only share is: ``os.access``
    says so, for root too (which ignores permission bits, not a read-only mount)."""
    real = os.access
    folders = [os.path.abspath(f) for f in folders]

    def access(path, mode, *a, **k):
        path = os.path.abspath(path)
        if mode & os.W_OK and any(path == f or path.startswith(f + os.sep) for f in folders):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_side_file_folder_is_refused_before_training(root, tmp_path, capsys, monkeypatch):
    """<csv>.runs/ read-only (its data manifest already there): exit 2 naming it, before training."""
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    before = csv.read_bytes()
    read_only(monkeypatch, tmp_path / "r.runs")
    monkeypatch.setattr(pipeline.grid, "load_category",
                        lambda *a, **k: pytest.fail("trained before finding r.runs read-only"))
    assert main(run_args(root, csv, tmp_path, "--models", "vae")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "side-file folder" in line and "r.runs" in line and "not writable" in line and "--results-csv" in line
    assert csv.read_bytes() == before


def test_a_finished_grid_on_a_read_only_share_reports_its_rows(root, tmp_path, capsys, monkeypatch):
    """Every job done and nothing to write: a read-only results folder is no reason to refuse."""
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    capsys.readouterr()
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    read_only(monkeypatch, tmp_path)
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    out, err = capsys.readouterr()
    assert "1 already in" in out and "error" not in err
    assert any(line.split()[:2] == ["widget", "cae"] for line in out.splitlines())  # the table's row
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == files


def fill_the_disk(monkeypatch, module, suffix: str) -> None:
    """Every file ending in ``suffix`` that ``module`` writes fails midway as on a full disk."""
    real = module.atomic_write

    @contextlib.contextmanager
    def full(path, *a, **k):
        with real(path, *a, **k) as f:
            if str(path).endswith(suffix):
                f.write(b"half a file")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield f

    monkeypatch.setattr(module, "atomic_write", full)


@pytest.mark.parametrize("which", ["checkpoint", "scores"])
def test_a_full_disk_while_writing_a_jobs_files_names_the_path_and_keeps_the_row(root, tmp_path, capsys,
                                                                                 monkeypatch, which):
    """ENOSPC while writing a job's checkpoint or per-image scores: the row is kept (its numbers
    are right), the file is named with what to do, no half file and no stale older file is left
    at its path (here: scores of a row replaced by --force), exit 1. The grid goes on."""
    csv = tmp_path / "r.csv"
    extra = ()
    if which == "scores":  # an earlier row's scores, which the forced row replaces
        assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
        extra = ("--force",)
    capsys.readouterr()
    module, suffix = (pipeline.checkpoints, ".pt") if which == "checkpoint" else (pipeline.runs, ".scores.npz")
    fill_the_disk(monkeypatch, module, suffix)
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "vae", *extra)) == 1
    out, err = capsys.readouterr()
    table = read_results(csv)
    assert sorted(table["model"]) == ["cae", "vae"] and "Traceback" not in out + err
    left_out = [p for p in tmp_path.rglob(f"*{suffix}")]
    assert left_out == [] and not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    lines = [line for line in out.splitlines() if "No space left on device" in line]
    assert len(lines) == 2 and all(suffix in line and "free disk space" in line for line in lines), out
    assert "2 row(s) were kept without a file" in err


def test_sighup_ends_a_run_like_ctrl_c_and_the_handlers_are_put_back(root, tmp_path, capsys, monkeypatch):
    """SIGHUP (the terminal closed) during a job: exit 129 with one line, no row; afterwards the
    process's own handlers are back (main() may run inside a notebook or a test)."""
    csv = tmp_path / "r.csv"

    def hang_up(*a, **k):
        os.kill(os.getpid(), signal.SIGHUP)
        pytest.fail("SIGHUP did not stop the job")

    monkeypatch.setattr(pipeline.job, "train_and_evaluate", hang_up)
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: None)  # if main() ignored it: not pytest's end
    try:
        before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
        assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 128 + signal.SIGHUP
        assert "stopped by SIGHUP; finished rows are kept in" in capsys.readouterr().err and not csv.exists()
        assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_re_evaluated_row_is_logged_as_re_evaluated_not_trained(root, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    capsys.readouterr()
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "--threshold-rule", "val_max")) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if "image AUROC" in line][0]
    assert "re-evaluated from checkpoint in" in line and "trained in" not in line
