"""Input sizes (pipeline/sizes.py): ``--image-size S`` or ``HxW``, and ``--aspect fixed``
(square, with a warning for a squashed category) or ``keep`` (the short side given, the long
side from the images' median aspect), through the grid and the command line to the row; images
of mixed shapes; sizes read from headers the way the loader reads the files.

The models' own H != W tests are in test_models.py (48 x 96 and 96 x 48), the GRF prior on
non-square tori in test_grf.py; the memory estimate of a rectangle in test_memory.py, its
figures and tables in test_plots.py, test_report.py and test_examples.py."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import models
from helpers import TRAIN, make_specs, make_tiny_mvtec, run_grid, wide_root
from models.errors import ConfigError
from pipeline import sizes
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig
from pipeline.results import read_results
from pipeline.train import TrainConfig

# helpers.TINY, with the ViT-VAE these size tests have always run (dim 32, decoder_width 16).
TINY = {"cae": {"widths": (8, 16), "latent_dim": 16}, "vae": {"widths": (8, 16), "latent_dim": 16},
        "vit_vae": {"patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "latent_dim": 4, "decoder_width": 16},
        "vae_grf": {"widths": (8, 16), "latent_channels": 4}}


def messages(record) -> str:
    return "\n".join(str(w.message) for w in record)


# ---------------------------------------------------------------- sizes and aspects


@pytest.mark.parametrize("text,size", [("128", 128), ("96x240", (96, 240)), ("96X240", (96, 240)),
                                       ("128x128", 128), (" 64 x 32 ", (64, 32)), (64, 64), ((48, 48), 48)])
def test_parse_image_size(text, size):
    assert sizes.parse_image_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "96x", "96x240x2", "-1", "1.5", "large"])
def test_parse_image_size_refuses_other_text(text):
    with pytest.raises(ConfigError, match="HxW"):
        sizes.parse_image_size(text)


def test_kept_size_follows_the_median_aspect_rounded_to_the_step():
    assert sizes.kept_size(2.5, 32, 16) == (32, 80)
    assert sizes.kept_size(1 / 2.5, 32, 16) == (80, 32)
    assert sizes.kept_size(2.51, 128, 16) == (128, 320)  # 321.3 -> 320
    assert sizes.kept_size(1.04, 128, 16) == 128  # within half a step of square: square
    assert sizes.kept_size(1.1, 128, 16) == (128, 144)
    assert sizes.kept_size(3.3, 80, 8) == (80, 264)


def test_squashed_category_warns_once_and_keep_gives_its_aspect(tmp_path):
    root = wide_root(tmp_path)
    with pytest.warns(UserWarning) as record:
        specs = make_specs(root, None, ["cae", "vae_grf"], image_size=32, train=TRAIN, model_overrides=TINY)
    squash = [w for w in record if "distorts" in str(w.message)]
    assert len(squash) == 1, messages(record)  # once per category, not per model or seed
    text = str(squash[0].message)
    assert "'strip'" in text and "2.5:1" in text and "--aspect keep" in text and "32 x 32" in text
    assert {s.category: s.image_size for s in specs} == {"strip": 32, "tile": 32}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept aspect: nothing to warn about
        specs = make_specs(root, None, ["cae", "vae_grf"], image_size=32, aspect="keep", train=TRAIN,
                           model_overrides=TINY)
    assert {s.category: s.image_size for s in specs} == {"strip": (32, 80), "tile": 32}
    assert {s.config.image_size for s in specs if s.category == "strip"} == {(32, 80)}


def test_a_near_square_category_is_not_warned(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), size=(44, 32))  # 1.375:1, under 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specs = make_specs(root, None, ["cae"], image_size=32, train=TRAIN, model_overrides=TINY)
    assert specs[0].image_size == 32


def test_keep_takes_one_size_and_a_bad_size_is_one_sentence(tmp_path, capsys):
    root = wide_root(tmp_path)
    with pytest.raises(ConfigError, match="takes one image size"):
        make_specs(root, None, ["cae"], image_size=(32, 80), aspect="keep", train=TRAIN, model_overrides=TINY)
    with pytest.raises(ConfigError, match="unknown aspect 'wide'"):
        make_specs(root, None, ["cae"], image_size=32, aspect="wide", train=TRAIN, model_overrides=TINY)
    with pytest.raises(ConfigError, match=r"vae_grf: image_size 32x34 \(width\) is not a multiple of 4"):
        make_specs(root, None, ["vae_grf"], image_size=(32, 34), train=TRAIN,
                   model_overrides={"vae_grf": TINY["vae_grf"]})
    args = ["run", "--data-root", str(root), "--results-csv", str(tmp_path / "r.csv"),
            "--checkpoint-dir", str(tmp_path / "ck"), "--epochs", "1", "--min-steps", "0"]
    assert main([*args, "--image-size", "32x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the image size must be S") and len(err.strip().splitlines()) == 1
    assert main([*args, "--image-size", "32x80", "--aspect", "keep"]) == 2
    assert "--aspect keep" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_dihedral_augmentation_of_rectangles_is_flips_and_said_once(tmp_path):
    from pipeline.augment import augment_batch

    torch.manual_seed(0)
    x = torch.arange(2 * 8 * 16, dtype=torch.float32).reshape(1, 2, 8, 16).repeat(64, 1, 1, 1)  # (64, 2, 8, 16)
    out = augment_batch(x, "dihedral")
    assert out.shape == x.shape
    variants = {tuple(o.flatten().tolist()) for o in out}
    expected = {tuple(v.flatten().tolist()) for v in (x[0], x[0].flip(-1), x[0].flip(-2), x[0].flip(-1).flip(-2))}
    assert variants == expected  # the rectangle's 4 symmetries, all drawn
    root = wide_root(tmp_path)
    train = TrainConfig(min_steps=0, epochs=1, batch_size=4, progress=False, num_threads=1, augment="dihedral")
    with pytest.warns(UserWarning, match="by flips only") as record:
        make_specs(root, None, ["cae"], image_size=32, aspect="keep", train=train, model_overrides=TINY)
    assert sum("flips only" in str(w.message) for w in record) == 1 and "'strip'" in messages(record)
    assert "'tile'" not in next(str(w.message) for w in record if "flips only" in str(w.message))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_sizes_from_headers_are_upright_as_the_loader_reads_them(tmp_path, ext):
    """A phone photo stored 80 x 32 with EXIF orientation 6 (a quarter turn) is 32 x 80 to the
    loader, and to the size choice, which reads only headers (a PNG is never decoded for it)."""
    root = make_tiny_mvtec(tmp_path, categories=("widget",), size=32, n_train=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(np.full((32, 80, 3), 128, np.uint8))  # width 80, height 32
    path = root / "widget" / "train" / "good" / f"rotated{ext}"
    stored.save(path, exif=exif)
    dims = models.mvtec.image_dimensions(root, "widget")
    assert (32, 80) in dims and (80, 32) not in dims
    ds = models.MVTecAD(root, "widget", "train", image_size=32, val_fraction=0)
    assert ds.original_sizes[[p.endswith(f"rotated{ext}") for p in ds.paths].index(True)] == (32, 80)


# ---------------------------------------------------------------- through the grid and the command line


def test_wide_category_end_to_end_with_kept_aspect(tmp_path):
    """Every model trains and is evaluated on 32 x 80 inputs; the row records the size and the
    evaluation shape at the input's aspect; a rerun reuses the rows; 'original' evaluates each
    image at its own 80 x 32 pixels."""
    root = wide_root(tmp_path)
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    kw = dict(image_size=32, aspect="keep", train=TRAIN, model_overrides=TINY, results_csv=csv,
              checkpoint_dir=ckpt, eval_config=EvalConfig(eval_size=64))
    logs = []
    df = run_grid(root, ["strip"], list(models.MODEL_NAMES), log=logs.append, **kw)
    assert not df.attrs["failures"], df.attrs["failures"]
    assert "strip: input 32x80 px (height x width)" in "\n".join(logs)
    table = read_results(csv)
    assert len(table) == 4 and set(table["image_size"]) == {"32x80"} and set(table["eval_size"]) == {"64x160"}
    assert table[["image_auroc", "pixel_auroc", "aupro"]].notna().all().all()
    again = run_grid(root, ["strip"], list(models.MODEL_NAMES), log=logs.append, **kw)
    assert again.attrs["skipped"] == 4 and again.attrs["ran"] == 0  # the size is part of the key, read back
    kw["eval_config"] = EvalConfig(eval_size="original")
    orig = run_grid(root, ["strip"], ["cae"], log=logs.append, **kw)
    assert orig.attrs["evaluated"] == 1 and orig.attrs["trained"] == 0  # evaluation only: from the checkpoint
    assert orig["eval_size"].iloc[0] == "original" and np.isfinite(orig["pixel_auroc"].iloc[0])


def test_mixed_sizes_run_with_a_note(tmp_path):
    """Images of several sizes and aspects in one category: each resized to the one H x W, with
    a note saying so; the run finishes and 'original' evaluates each image at its own size."""
    root = make_tiny_mvtec(tmp_path, categories=("parts",), size=(32, 64), n_train=6, gray_categories=())
    folder = root / "parts"
    for path in sorted(folder.rglob("*.png")):
        number = int(path.stem.removesuffix("_mask"))  # an image and its mask alike
        if number % 3 == 0:  # these stay 1:2
            continue
        new = (32, 96) if number % 2 else (40, 48)  # (width, height): 1:3 and 1:1.2
        resample = Image.NEAREST if path.stem.endswith("_mask") else Image.BILINEAR
        Image.open(path).resize(new, resample).save(path)
    dims = models.mvtec.image_dimensions(root, "parts")
    assert len(set(dims)) >= 2
    with pytest.warns(UserWarning, match="mixed shapes") as record:
        df = run_grid(root, None, ["cae"], image_size=32, aspect="keep", train=TRAIN, model_overrides=TINY,
                      results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck",
                      eval_config=EvalConfig(eval_size="original"), log=lambda m: None)
    note = next(str(w.message) for w in record if "mixed shapes" in str(w.message))
    assert "'parts'" in note and "each is resized to" in note
    assert not df.attrs["failures"], df.attrs["failures"]
    height, width = models.image_hw(sizes.parse_image_size(df["image_size"].iloc[0]))
    assert height > width == 32  # taller than wide: the median image is portrait
    assert np.isfinite(df["pixel_auroc"].iloc[0])


def test_command_line_warns_on_squash_and_keeps_the_aspect(tmp_path, capsys):
    root = wide_root(tmp_path)
    args = ["run", "--data-root", str(root), "--categories", "strip", "--models", "cae", "--epochs", "1",
            "--min-steps", "0", "--image-size", "32", "--batch-size", "4", "--set", "cae.widths=[8,16]",
            "--set", "cae.latent_dim=16", "--num-threads", "1", "--no-progress",
            "--results-csv", str(tmp_path / "r.csv"), "--checkpoint-dir", str(tmp_path / "ck")]
    with pytest.warns(UserWarning, match="distorts") as record:  # the CLI prints it as "warning: ..."
        assert main(args) == 0
    warned = [str(w.message) for w in record if "distorts" in str(w.message)]
    assert len(warned) == 1 and warned[0].startswith("the images of 'strip' are about 2.5:1")
    assert "--aspect keep" in warned[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([*args, "--aspect", "keep"]) == 0
    assert "strip: input 32x80 px (height x width)" in capsys.readouterr().out
    assert sorted(read_results(tmp_path / "r.csv")["image_size"]) == ["32", "32x80"]  # two rows, two sizes


# ---------------------------------------------------------------- aspect "auto"


@pytest.mark.parametrize("aspect,median,size,resolved", [
    ("auto", 2.5, 32, "keep"), ("auto", 1 / 2.5, 32, "keep"),  # wide or tall, either way
    ("auto", 1.51, 128, "keep"), ("auto", 1.5, 128, "fixed"), ("auto", 1 / 1.5, 128, "fixed"),  # beyond 1.5:1 only
    ("auto", 1.375, 32, "fixed"), ("auto", 1.0, 32, "fixed"),
    ("auto", 2.5, (32, 80), "fixed"),  # an H x W size is a shape chosen by hand: kept as given
    ("fixed", 2.5, 32, "fixed"), ("keep", 1.0, 32, "keep"),
])
def test_auto_keeps_the_aspect_beyond_one_and_a_half_to_one(aspect, median, size, resolved):
    assert sizes.resolve_aspect(aspect, median, size) == resolved
    assert sizes.AUTO_KEEP == sizes.SQUASH_WARNING == 1.5  # auto keeps exactly where the fixed square would warn


def test_auto_jobs_are_the_jobs_of_the_aspect_they_resolve_to(tmp_path):
    """A 2.5:1 category under auto is the keep job and a square one the fixed job: same size,
    same train_hash and config_hash (only the resolved size enters the key), and no squash warning."""
    root = wide_root(tmp_path)
    make_tiny_mvtec(tmp_path / "data", categories=("tower",), size=(32, 80), gray_categories=(), seed=2)  # 1:2.5
    make_tiny_mvtec(tmp_path / "data", categories=("widget",), size=(44, 32), gray_categories=(), seed=3)  # 1.375:1
    kw = dict(image_size=32, train=TRAIN, model_overrides=TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = make_specs(root, None, ["cae", "vae_grf"], aspect="auto", **kw)
        keep = make_specs(root, ["strip", "tower"], ["cae", "vae_grf"], aspect="keep", **kw)
    with pytest.warns(UserWarning, match="distorts"):  # the fixed square squashes strip and tower
        fixed = make_specs(root, None, ["cae", "vae_grf"], aspect="fixed", **kw)
    assert {s.category: s.image_size for s in auto} == {"strip": (32, 80), "tower": (80, 32), "tile": 32,
                                                        "widget": 32}
    keys = {(s.category, s.model): (s.image_size, s.train_hash(), s.config_hash()) for s in auto}
    expected = {(s.category, s.model): (s.image_size, s.train_hash(), s.config_hash())
                for s in [*keep, *(s for s in fixed if s.category in ("tile", "widget"))]}
    assert keys == expected
    assert len({k[1] for k in keys.values()}) == len(keys)  # and the hashes do tell the jobs apart


def test_auto_through_the_grid_says_which_categories_it_kept_and_reuses_their_rows(tmp_path, capsys):
    """One line per kept category, none for the square one; the rows written under auto are the
    rows of keep (strip) and fixed (tile): a rerun under either trains nothing."""
    root = wide_root(tmp_path)
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    args = ["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--min-steps", "0",
            "--image-size", "32", "--aspect", "auto", "--batch-size", "4", "--set", "cae.widths=[8,16]",
            "--set", "cae.latent_dim=16", "--num-threads", "1", "--no-progress", "--results-csv", str(csv),
            "--checkpoint-dir", str(ckpt)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert "distorts" not in messages(record)  # nothing is squashed (the few-val-images note may come)
    out = capsys.readouterr().out
    assert "strip: aspect 2.5:1, kept (--aspect auto): 32x80 px (H x W)." in out
    assert "tile: aspect" not in out and "tile: input" not in out
    assert sorted(read_results(csv)["image_size"]) == ["32", "32x80"]
    for category, aspect in (("strip", "keep"), ("tile", "fixed")):
        assert main([*args, "--aspect", aspect, "--categories", category]) == 0
        assert len(read_results(csv)) == 2, (category, aspect)  # the same key: no new row, nothing trained
        assert f"1 job(s): 1 already in {csv}, 0 to train." in capsys.readouterr().out
