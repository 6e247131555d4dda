"""models/mvtec/cache.py: decoded files reused from the process's memory and from ``cache_dir``,
keyed by the file's content: what changed is decoded again, nothing else."""
from __future__ import annotations

import os
import time

import pytest
import torch
from PIL import Image

import models
from helpers import make_tiny_mvtec
from loader_helpers import good_folder
from models.mvtec import decode

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py: each test decodes what it builds


def _forbid_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_image", boom)
    monkeypatch.setattr(decode, "read_mask", boom)  # every mask is decoded through it


def test_disk_cache_reuse_and_invalidation(tiny_mvtec, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16, cache_dir=cache, memory_cache=False)
    models.MVTecAD(tiny_mvtec, "widget", "train", image_size=16, cache_dir=cache, memory_cache=False)
    assert len(list(cache.glob("*.pt"))) == 2
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        again = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16, cache_dir=cache, memory_cache=False)
        models.MVTecAD(tiny_mvtec, "widget", "val", image_size=16, cache_dir=cache, memory_cache=False)
        with pytest.raises(AssertionError):  # another size is another cache entry
            models.MVTecAD(tiny_mvtec, "widget", "test", image_size=8, cache_dir=cache, memory_cache=False)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)

    # A changed file is decoded again; the others come from the cache, a touched one (new mtime) too.
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",), n_train=3)
    models.MVTecAD(root, "widget", image_size=16, cache_dir=cache, memory_cache=False)
    changed, touched = (root / "widget" / "train" / "good" / name for name in ("002.png", "001.png"))
    with open(changed, "ab") as f:
        f.write(b"\0")
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    seen = []
    real = decode.decode_image
    monkeypatch.setattr(decode, "decode_image", lambda path, *a: seen.append(path) or real(path, *a))
    models.MVTecAD(root, "widget", image_size=16, cache_dir=cache, memory_cache=False)
    assert seen == [changed]


@pytest.mark.parametrize("memory_cache", [False, True])
def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_decoded_again(tmp_path, memory_cache):
    """Issue 20, item 5: the caches are keyed by the file's content, not by (path, size, mtime)."""
    folder = good_folder(tmp_path)
    for i, value in enumerate((10, 20, 30)):
        Image.new("RGB", (8, 8), (value,) * 3).save(folder / f"{i}.bmp")  # BMP: same size whatever the pixels
    cache = tmp_path / "cache"
    first = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0, cache_dir=cache, memory_cache=memory_cache)
    assert first.images[1].unique().tolist() == [20]
    replaced = folder / "1.bmp"
    st = replaced.stat()
    Image.new("RGB", (8, 8), (200,) * 3).save(replaced)
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or an unpacked archive leaves it
    assert (replaced.stat().st_size, replaced.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = models.MVTecAD(tmp_path, "odd", image_size=8, val_fraction=0.0, cache_dir=cache, memory_cache=memory_cache)
    assert again.images[1].unique().tolist() == [200]
    assert again.images[0].unique().tolist() == [10]


def test_memory_cache_shares_decodes(tiny_mvtec, monkeypatch):
    models.MVTecAD(tiny_mvtec, "fabric", "train", image_size=16)  # decodes all of train/good
    _forbid_decoding(monkeypatch)
    val = models.MVTecAD(tiny_mvtec, "fabric", "val", image_size=16)
    assert len(val) == 1


def test_masks_at_another_size_reuse_the_decodes_of_that_size(tiny_mvtec, monkeypatch):
    test = models.MVTecAD(tiny_mvtec, "widget", "test", image_size=16)
    models.MVTecAD(tiny_mvtec, "widget", "test", image_size=32)  # decodes the masks at 32 px
    _forbid_decoding(monkeypatch)
    assert torch.equal(test.masks_at(32), models.MVTecAD(tiny_mvtec, "widget", "test", image_size=32).masks)
