"""models/mvtec/decode.py: pixels and masks from one file, whatever its PIL mode, bit depth or
encoding; and the files that cannot be read, each refused in one sentence naming it."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models
from helpers import dataset_error, make_tiny_mvtec
from loader_helpers import good_folder, load, reference, rewrite_masks, sixteen_bit
from models.errors import DatasetError
from models.mvtec import decode

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


# --------------------------------------------------------------------------- one file


def test_decode_mask_is_read_mask_resized_and_decode_image_keeps_the_original_size(tmp_path):
    a = np.zeros((10, 20), np.uint8)
    a[2:6, 4:12] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    Image.fromarray(np.full((10, 20, 3), 7, np.uint8)).save(tmp_path / "i.png")
    marked, size = decode.read_mask(tmp_path / "m.png")
    assert size == (20, 10) and marked.dtype == bool and marked.sum() == 32
    mask, size = decode.decode_mask(tmp_path / "m.png", (5, 10))
    assert size == (20, 10) and mask.dtype == np.uint8 and mask.shape == (5, 10)
    assert (mask == decode.resize_mask(marked, (5, 10))).all() and mask.sum() == 8
    assert (decode.decode_mask(tmp_path / "m.png", None).array == marked).all()
    image = decode.decode_image(tmp_path / "i.png", 8, 1)
    assert image.array.shape == (1, 8, 8) and (image.array == 7).all() and image.original_size == (20, 10)


# --------------------------------------------------------------------------- images


def test_odd_modes_and_non_square_are_converted(tmp_path):
    folder = good_folder(tmp_path)
    Image.fromarray(np.full((20, 30, 4), [200, 100, 50, 255], np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(folder / "sixteen.png")  # I;16 -> 255
    Image.fromarray(np.full((20, 20), 0.5, np.float32)).save(folder / "float.tif")  # F in [0, 1] -> 128
    Image.fromarray(np.full((20, 20, 2), [90, 255], np.uint8), "LA").save(folder / "la.png")
    Image.new("1", (20, 20), 1).save(folder / "bilevel.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(folder / "cmyk.jpg")
    with Image.open(folder / "sixteen.png") as im:
        assert im.mode.startswith("I")
    ds = models.MVTecAD(tmp_path, "odd", "train", image_size=8, val_fraction=0.0)
    px = {Path(p).stem: ds.images[i, :, 4, 4].tolist() for i, p in enumerate(ds.paths)}
    assert px["rgba"] == [200, 100, 50] and px["sixteen"] == [255] * 3 and px["la"] == [90] * 3
    assert px["bilevel"] == [255] * 3 and abs(px["float"][0] - 128) <= 1 and px["cmyk"][0] > 240
    assert abs(px["palette"][0] - 128) <= 2
    gray = models.MVTecAD(tmp_path, "odd", "train", image_size=8, in_channels=1, val_fraction=0.0)
    assert gray.images.shape == (7, 1, 8, 8)


def test_rgba_transparency_is_black_and_16bit_is_scaled(tmp_path):
    folder = good_folder(tmp_path)
    Image.fromarray(np.full((8, 8, 4), [255, 255, 255, 0], np.uint8), "RGBA").save(folder / "clear.png")
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "mid16.png")  # 32896 / 257 = 128
    ds = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0)
    assert ds.images[0].max() == 0 and (ds.images[1] == 128).all()


def _scene(lo: float, hi: float, size: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return lo + (hi - lo) * (x + y) / (2 * size - 2)


def _odd_category(tmp_path, files: dict):
    folder = good_folder(tmp_path)
    for name, array in files.items():
        Image.fromarray(array).save(folder / name)
    return tmp_path


def test_two_32bit_exposures_of_one_scene_keep_their_ratio(tmp_path):
    scene = np.rint(_scene(0, 250)).astype(np.int32)
    root = _odd_category(tmp_path, {"a_short.tif": scene, "b_long.tif": scene * 200})  # 32-bit int, 'I'
    ds, caught = load(root, "odd", "train", image_size=16, in_channels=1, val_fraction=0.0)
    short, long_ = ds.images[0, 0].double(), ds.images[1, 0].double()
    # One scale (16-bit: 65535 = white) for both, so the long exposure is 200 times brighter.
    assert np.allclose(long_.numpy(), scene * 200 / 257, atol=1)
    assert short.max() <= 1  # the short one is not read as an 8-bit image (it would be the brighter one)
    said = [m for m in caught if "almost black" in m]
    assert len(said) == 1 and "a_short.tif" in said[0] and "8-bit PNG" in said[0]


def test_float_images_in_0_1_keep_their_ratio(tmp_path):
    scene = _scene(0, 0.4).astype(np.float32)
    root = _odd_category(tmp_path, {"a.tif": scene, "b.tif": scene * 2})
    ds, _ = load(root, "odd", "train", image_size=16, in_channels=1, val_fraction=0.0)
    assert np.allclose(ds.images[0, 0].numpy(), scene * 255, atol=1)
    assert np.allclose(ds.images[1, 0].numpy(), scene * 510, atol=1)


@pytest.mark.parametrize("name,array,words", [
    ("int_70000.tif", np.rint(_scene(0, 70000)).astype(np.int32), ("70000", "16-bit range", "8- or 16-bit PNG")),
    ("int_negative.tif", np.rint(_scene(-5, 100)).astype(np.int32), ("-5", "8- or 16-bit PNG")),
    ("float_0_3.tif", _scene(0, 3).astype(np.float32), ("3", "[0, 1]", "8- or 16-bit PNG")),
    ("float_nan.tif", np.where(_scene(0, 1) > 0.5, np.nan, 0.2).astype(np.float32), ("NaN", "8- or 16-bit PNG")),
])
def test_images_outside_their_types_range_are_refused_not_stretched(tmp_path, name, array, words):
    root = _odd_category(tmp_path, {"fine.png": np.full((16, 16), 100, np.uint8), name: array})
    dataset_error(lambda: models.MVTecAD(root, "odd", "train", image_size=8, val_fraction=0.0), name, *words)


# --------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_image"])
def test_unreadable_file_is_named(tmp_path, kind):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=3, size=64)
    bad = root / "widget" / "train" / "good" / "001.png"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_text("this is not a picture")
    dataset_error(lambda: models.MVTecAD(root, "widget", image_size=16), str(bad))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_permissions_not_damage(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    f = root / "widget" / "train" / "good" / "000.png"
    f.chmod(0)
    try:
        msg = dataset_error(lambda: models.MVTecAD(root, "widget", "train", image_size=32), str(f), "permission")
        assert "damaged" not in msg
    finally:
        f.chmod(0o644)


# --------------------------------------------------------------------------- masks


def test_antialiased_and_0_1_masks_are_accepted(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1, size=16)
    gt = root / "widget" / "ground_truth"
    a = np.zeros((16, 16), np.uint8)
    a[4:12, 4:12] = 255
    a[4:12, 3] = 128  # an antialiased edge
    Image.fromarray(a).save(gt / "hole" / "000_mask.png")
    Image.fromarray((a == 255).astype(np.uint8)).save(gt / "scratch" / "000_mask.png")  # 0/1
    ds = models.MVTecAD(root, "widget", "test", image_size=16)
    assert ds.masks[2].sum() == 72 and ds.masks[3].sum() == 64


def test_unusable_mask(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_train=2, n_per_defect=1)
    mask = root / "widget" / "ground_truth" / "hole" / "000_mask.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(mask)  # a gradient, not a mask
    dataset_error(lambda: models.MVTecAD(root, "widget", "test", image_size=16), str(mask), "binary")


MASK_FORMS = {
    "16bit_0_1": (sixteen_bit, ".png"),
    "16bit_0_100": (lambda a: Image.fromarray((a > 0).astype(np.uint16) * 100), ".png"),
    "16bit_0_65535": (lambda a: Image.fromarray((a > 0).astype(np.uint16) * 65535), ".png"),
    "32bit_int_0_1": (lambda a: Image.fromarray((a > 0).astype(np.int32)), ".tif"),
    "float_0_1": (lambda a: Image.fromarray((a > 0).astype(np.float32)), ".tif"),
    "bilevel": (lambda a: Image.fromarray(a > 0), ".png"),
    "8bit_0_1": (lambda a: Image.fromarray((a > 0).astype(np.uint8)), ".png"),
}


@pytest.mark.parametrize("form", sorted(MASK_FORMS))
def test_any_non_zero_mask_pixel_is_a_defect_whatever_the_bit_depth(tmp_path, form):
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / form, categories=("widget",))
    fn, suffix = MASK_FORMS[form]
    rewrite_masks(root, fn, suffix=suffix)
    ds, caught = load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), form
    assert not any("empty" in m for m in caught), caught
    assert (ds.masks_at(64) == ref.masks_at(64)).all()


def test_antialiased_16bit_mask_is_thresholded_at_half_its_own_maximum(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",), n_per_defect=1, size=16)
    a = np.zeros((16, 16), np.uint16)
    a[4:12, 4:12] = 1000  # a 16-bit mask whose defect value is 1000, not 65535
    a[4:12, 3] = 400  # an antialiased edge below half of 1000
    a[4:12, 12] = 600  # and one above
    Image.fromarray(a).save(root / "widget" / "ground_truth" / "hole" / "000_mask.png")
    ds, _ = load(root, image_size=16)
    assert ds.masks[ds.defect_types.index("hole")].sum() == 72


def _halves(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and right halves (bool) of each defect square of a 0/255 mask."""
    ys, xs = np.nonzero(a)
    mid = (xs.min() + xs.max() + 1) // 2
    left = (a > 0) & (np.arange(a.shape[1])[None, :] < mid)
    return left, (a > 0) & ~left


def _two_colours(a):  # a red and a dark-blue defect
    left, right = _halves(a)
    rgb = np.zeros((*a.shape, 3), np.uint8)
    rgb[left] = (255, 0, 0)
    rgb[right] = (0, 0, 80)
    return Image.fromarray(rgb)


def _classes(a, dtype=np.uint8):  # class indices 0 / 1 / 3
    left, right = _halves(a)
    return Image.fromarray((left * 1 + right * 3).astype(dtype))


def _palette(a):  # palette indices 1 and 2, both drawn black: the index marks, not the colour
    im = _classes(a)
    p = Image.frombytes("P", im.size, np.where(np.asarray(im) == 3, 2, np.asarray(im)).astype(np.uint8).tobytes())
    p.putpalette([0, 0, 0] * 256)
    return p


def _alpha_only(mode):
    def encode(a):
        colour = np.zeros((*a.shape, len(mode) - 1), np.uint8) + (255 if mode == "RGBA" else 0)
        return Image.fromarray(np.dstack([colour, a]).astype(np.uint8), mode)
    return encode


MASK_ENCODINGS = {
    "rgb_red_and_dark_blue": _two_colours,
    "class_indices_0_1_3": _classes,
    "class_indices_16bit_0_1_3": lambda a: _classes(a, np.uint16),
    "palette_indices_drawn_black": _palette,
    "la_marked_in_alpha_only": _alpha_only("LA"),
    "rgba_white_marked_in_alpha_only": _alpha_only("RGBA"),
}


@pytest.mark.parametrize("encoding", sorted(MASK_ENCODINGS))
def test_any_non_zero_pixel_of_any_channel_is_a_defect(tmp_path, encoding):
    """Issue 20, item 6: colour channels, class indices, palette indices and alpha all mark defects."""
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / encoding, categories=("widget",))
    rewrite_masks(root, MASK_ENCODINGS[encoding])
    ds, caught = load(root)
    assert ds.has_masks and (ds.masks == ref.masks).all(), (encoding, ds.masks.sum(), ref.masks.sum())
    assert not any("empty" in m or "inverted" in m for m in caught), caught
    assert (ds.masks_at(64) == ref.masks_at(64)).all()


def test_transparent_pixels_of_a_mask_are_normal_whatever_their_colour(tmp_path):
    _, ref = reference(tmp_path)
    root = make_tiny_mvtec(tmp_path / "rgba", categories=("widget",))

    def red_on_clear_white(a):  # the background white but fully transparent
        rgba = np.full((*a.shape, 4), (255, 255, 255, 0), np.uint8)
        rgba[a > 0] = (255, 0, 0, 255)
        return Image.fromarray(rgba, "RGBA")

    rewrite_masks(root, red_on_clear_white)
    assert (load(root)[0].masks == ref.masks).all()


# ---------------------------------------------------------------- large files, and splits of mixed sizes and modes


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
    im, size = decode.open_image(big, reduce_to=(32, 32))
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
