"""Products that are not square (issue 15): rectangular inputs from the loader to the row.

The models' own H != W tests are in test_models.py (48 x 96 and 96 x 48), the GRF prior on
non-square tori in test_grf.py; here the sizes the grid chooses, the warnings it gives, the
evaluation grid and the command line.
"""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import models
from helpers import make_tiny_mvtec
from models.errors import ConfigError
from pipeline import memory, plots, report, sizes
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig, eval_grid, maps_at
from pipeline.grid import make_specs, run_grid
from pipeline.results import read_results
from pipeline.train import TrainConfig

TINY = {"cae": {"widths": (8, 16), "latent_dim": 16}, "vae": {"widths": (8, 16), "latent_dim": 16},
        "vit_vae": {"patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "latent_dim": 4, "decoder_width": 16},
        "vae_grf": {"widths": (8, 16), "latent_channels": 4}}
TRAIN = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1)


def wide_root(tmp_path, size=(80, 32)):
    """A category 'strip' of 2.5:1 images (width x height 80 x 32) and a square one 'tile'."""
    make_tiny_mvtec(tmp_path / "data", categories=("strip",), size=size, gray_categories=())
    return make_tiny_mvtec(tmp_path / "data", categories=("tile",), size=32, gray_categories=(), seed=1)


def messages(record) -> str:
    return "\n".join(str(w.message) for w in record)


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


def test_models_size_multiple_is_the_lcm_of_strides_and_patches():
    assert models.size_multiple(models.MODEL_NAMES) == 16  # CNNs 16, VAE-GRF 8, ViT patch 16
    assert models.size_multiple(["vae_grf"]) == 8
    assert models.size_multiple(["vae_grf", "vit_vae"], {"vit_vae": {"patch_size": 12}}) == 24


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
    assert {s.model_config().image_size for s in specs if s.category == "strip"} == {(32, 80)}


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
            "--checkpoint-dir", str(tmp_path / "ck"), "--epochs", "1"]
    assert main([*args, "--image-size", "32x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the image size must be S") and len(err.strip().splitlines()) == 1
    assert main([*args, "--image-size", "32x80", "--aspect", "keep"]) == 2
    assert "--aspect keep" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_wide_category_end_to_end_with_kept_aspect(tmp_path):
    """Every model trains and is evaluated on 32 x 80 inputs; the row records the size and the
    evaluation grid at the input's aspect; a rerun reuses the rows; 'original' evaluates each
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


def test_loader_resizes_to_height_by_width(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("strip",), size=(80, 32))
    ds = models.MVTecAD(root, "strip", "test", image_size=(16, 40))
    assert ds.images.shape[1:] == (3, 16, 40) and ds.masks.shape[1:] == (16, 40)
    assert ds.original_sizes[0] == (80, 32)  # (width, height)
    assert models.MVTecAD(root, "strip", "test", image_size=(16, 16)).image_size == 16  # one spelling per size
    masks = ds.masks_at((32, 80))
    assert masks.shape[1:] == (32, 80)
    full = ds.masks_at("original")
    assert full[0].shape == (32, 80)
    # the masks read at the image's own size and at 32 x 80 are the same pixels here
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(full, masks))
    for i in np.flatnonzero(ds.labels.numpy()):  # the defect square lands where the mask says
        x = ds.images[i].float().mean(0)
        m = ds.masks[i].bool()
        assert (x[m].mean() - x[~m].mean()).abs() > 40


def test_eval_grid_keeps_the_input_aspect():
    assert eval_grid(256, 128) == 256
    assert eval_grid(256, (128, 320)) == (256, 640)
    assert eval_grid(256, (320, 128)) == (640, 256)
    assert eval_grid(100, (48, 96)) == (100, 200)
    assert eval_grid("original", (48, 96)) == "original"
    maps = torch.rand(3, 8, 20)
    assert maps_at(maps, (16, 40)).shape == (3, 16, 40)
    assert maps_at(maps, (8, 20)) is maps
    out = maps_at(maps, "original", [(40, 10), (20, 8), (60, 30)])  # (width, height) each
    assert [a.shape for a in out] == [(10, 40), (8, 20), (30, 60)]


def test_memory_estimate_and_suggestion_keep_the_aspect():
    wide = memory.estimate("cae", image_size=(64, 160), batch_size=4, overrides=TINY["cae"])
    square = memory.estimate("cae", image_size=64, batch_size=4, overrides=TINY["cae"])
    assert wide.activation_bytes > 2 * square.activation_bytes  # 2.5x the pixels
    with pytest.raises(ConfigError, match=r"--image-size \d+x\d+ or less"):
        memory.check_fits("cae", image_size=(128, 320), batch_size=4, device=torch.device("cpu"),
                          overrides=TINY["cae"], available=wide.total_bytes)


def test_gallery_panels_follow_the_images_aspect(tmp_path):
    n, h, w = 2, 16, 40
    rng = np.random.default_rng(0)
    arrays = dict(images=rng.random((n, 3, h, w)), masks=rng.random((n, h, w)) > 0.9, row_labels=["good", "cut"],
                  reconstructions={"cae": rng.random((n, 3, h, w))}, maps={"cae": rng.random((n, h, w))})
    wide = Image.open(plots.anomaly_gallery(tmp_path / "wide.png", **arrays))
    crop = {"images": arrays["images"][..., :h], "masks": arrays["masks"][..., :h],  # the same, h x h
            "reconstructions": {"cae": arrays["reconstructions"]["cae"][..., :h]},
            "maps": {"cae": arrays["maps"]["cae"][..., :h]}}
    square = Image.open(plots.anomaly_gallery(tmp_path / "square.png", **{**arrays, **crop}))
    assert wide.width / wide.height > 1.5 * square.width / square.height


def test_command_line_warns_on_squash_and_keeps_the_aspect(tmp_path, capsys):
    root = wide_root(tmp_path)
    args = ["run", "--data-root", str(root), "--categories", "strip", "--models", "cae", "--epochs", "1",
            "--image-size", "32", "--batch-size", "4", "--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16",
            "--num-threads", "1", "--no-progress", "--results-csv", str(tmp_path / "r.csv"),
            "--checkpoint-dir", str(tmp_path / "ck")]
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


def test_dataset_table_shows_sizes_and_survives_odd_categories(tmp_path):
    """The notebook's first table: images, median size and aspect per category; a category
    with an unreadable file or no images shows '?' / 0 rather than stopping the notebook."""
    root = wide_root(tmp_path)
    make_tiny_mvtec(root, categories=("broken",), size=32)
    (root / "broken" / "test" / "hole" / "000.png").write_bytes(b"not an image")
    (root / "empty" / "train" / "good").mkdir(parents=True)
    table = report.describe_dataset(root).set_index("category")
    assert table.loc["strip", "median size (w x h)"] == "80x32" and table.loc["strip", "aspect (w:h)"] == "2.5:1"
    assert table.loc["tile", "aspect (w:h)"] == "1:1" and table.loc["tile", "images"] == 14
    assert table.loc["broken", "images"] == "?" and table.loc["empty", "images"] == 0


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
    train = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1, augment="dihedral")
    with pytest.warns(UserWarning, match="by flips only") as record:
        make_specs(root, None, ["cae"], image_size=32, aspect="keep", train=train, model_overrides=TINY)
    assert sum("flips only" in str(w.message) for w in record) == 1 and "'strip'" in messages(record)
    assert "'tile'" not in next(str(w.message) for w in record if "flips only" in str(w.message))


def test_latent_examples_of_rectangular_models(tmp_path):
    from pipeline import examples

    vae = models.build_model("vae", image_size=(32, 64), widths=(8, 16), latent_dim=8)
    grf = models.build_model("vae_grf", image_size=(32, 64), widths=(8, 16), latent_channels=2)
    ex = examples.latent_examples(vae, grf)  # its own procedural images, at the models' H x W
    assert ex.images.shape == (2, 3, 32, 64) and ex.grf_z.shape == (4, 2, 8, 16)
    assert ex.vae_decoded.shape == ex.grf_decoded.shape == (4, 3, 32, 64)
    path = plots.vae_vs_grf_figure(tmp_path / "latents.png", images=ex.images, vae_z=ex.vae_z,
                                   vae_decoded=ex.vae_decoded, grf_z=ex.grf_z, grf_decoded=ex.grf_decoded)
    assert path.is_file()


def test_figures_of_a_category_whose_models_differ_in_size(tmp_path, capsys):
    """Rows of two runs at other sizes (CAE kept-aspect, VAE square): the gallery shows the
    models that share the first one's input and names the other, instead of stopping."""
    root = wide_root(tmp_path)
    kw = dict(train=TRAIN, model_overrides=TINY, results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck",
              log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the square run's squash warning
        run_grid(root, ["strip"], ["cae"], image_size=32, aspect="keep", **kw)
        run_grid(root, ["strip"], ["vae"], image_size=32, **kw)
    rows = read_results(tmp_path / "r.csv")
    paths = report.galleries(rows, root, tmp_path / "figs", tmp_path / "ck", n_good=1, n_defect=1)
    assert [p.name for p in paths] == ["gallery_strip.png"]
    assert "vae left out of its figures: trained at another input size than 32x80 px" in capsys.readouterr().out
