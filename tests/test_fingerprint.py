"""pipeline.fingerprint: a category's digest follows its files' paths and contents, nothing else."""
from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import pytest

import models
from helpers import make_tiny_mvtec
from models import filehash
from models.errors import DatasetError
from pipeline.fingerprint import compare, data_fingerprint, describe_change

MASK = "ground_truth/scratch/000_mask.png"


@pytest.fixture(autouse=True)
def _fresh_memo():
    filehash.clear_memo()  # each test starts as a new process would
    yield
    filehash.clear_memo()


@pytest.fixture
def root(tmp_path):
    return make_tiny_mvtec(tmp_path / "projA" / "data", categories=("widget",), size=16)


def test_files_are_the_images_under_train_test_and_ground_truth(root):
    fp = data_fingerprint(root, "widget")
    assert list(fp.files) == sorted(fp.files)
    assert MASK in fp.files and "train/good/000.png" in fp.files and "test/scratch/001.png" in fp.files
    assert fp.n_files == len(fp.files) == 8 + 2 + 2 * 2 + 2 * 2
    assert fp.n_bytes == sum((root / "widget" / rel).stat().st_size for rel in fp.files)
    assert len(fp.digest) == 16 and int(fp.digest, 16) >= 0
    assert fp.files[MASK] == filehash.hash_file(root / "widget" / MASK)


def test_a_copy_elsewhere_with_other_mtimes_has_the_same_digest(root, tmp_path):
    copy = tmp_path / "elsewhere" / "deeper" / "data"
    shutil.copytree(root, copy)
    for path in copy.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    original, copied = data_fingerprint(root, "widget"), data_fingerprint(copy, "widget")
    assert copied.digest == original.digest
    assert copied.files == original.files


def test_touching_a_file_keeps_the_digest(root):
    before = data_fingerprint(root, "widget")
    st = (root / "widget" / MASK).stat()
    os.utime(root / "widget" / MASK, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert data_fingerprint(root, "widget") == before


def test_changing_one_masks_bytes_changes_the_digest_and_names_that_file(root):
    before = data_fingerprint(root, "widget")
    with open(root / "widget" / MASK, "ab") as f:
        f.write(b"\0")  # trailing bytes after IEND: the same picture, other content
    after = data_fingerprint(root, "widget")
    assert after.digest != before.digest
    changes = compare(before.files, after.files)
    assert (changes.changed, changes.added, changes.removed) == ((MASK,), (), ())
    assert changes.n_files == 1 and changes


def test_adding_removing_and_renaming_files_is_detected(root):
    widget = root / "widget"
    before = data_fingerprint(root, "widget")
    shutil.copy(widget / "test/good/000.png", widget / "test/good/007.png")
    added = data_fingerprint(root, "widget")
    assert added.digest != before.digest
    assert compare(before.files, added.files).added == ("test/good/007.png",)

    (widget / "train/good/003.png").unlink()
    removed = data_fingerprint(root, "widget")
    assert compare(added.files, removed.files).removed == ("train/good/003.png",)

    (widget / "train/good/004.png").rename(widget / "train/good/104.png")  # same content, other path
    renamed = data_fingerprint(root, "widget")
    assert renamed.digest != removed.digest
    changes = compare(removed.files, renamed.files)
    assert (changes.changed, changes.added, changes.removed) == ((), ("train/good/104.png",), ("train/good/004.png",))


def test_hidden_and_non_image_files_are_ignored_and_extensions_any_case(root):
    widget = root / "widget"
    before = data_fingerprint(root, "widget")
    (widget / "train/good/.000.png").write_bytes(b"hidden")
    (widget / "train/good/.thumbs").mkdir()
    (widget / "train/good/.thumbs/000.png").write_bytes(b"in a hidden folder")
    (widget / "train/good/notes.txt").write_text("not an image")
    (widget / "test/good/Thumbs.db").write_bytes(b"x")
    (widget / "preview.png").write_bytes(b"not under train, test or ground_truth")
    assert data_fingerprint(root, "widget") == before

    shutil.copy(widget / "train/good/000.png", widget / "train/good/050.PNG")
    assert "train/good/050.PNG" in data_fingerprint(root, "widget").files


def test_same_names_with_other_images_differ(tmp_path):
    a = make_tiny_mvtec(tmp_path / "projA" / "data", categories=("widget",), size=16, seed=0)
    b = make_tiny_mvtec(tmp_path / "projB" / "data", categories=("widget",), size=16, seed=1)
    fa, fb = data_fingerprint(a, "widget"), data_fingerprint(b, "widget")
    assert fa.digest != fb.digest
    assert set(fa.files) == set(fb.files)


def test_symlinked_files_count_with_their_target_content(root, tmp_path):
    widget = root / "widget"
    target = root / "shared" / "linked_target.png"  # elsewhere in the data root: links there are read
    target.parent.mkdir()
    shutil.copy(widget / "train/good/000.png", target)
    (widget / "train/good/linked.png").symlink_to(target)
    (widget / "train/good/loop").symlink_to(widget / "train")  # a folder loop must not walk forever
    (widget / "test/also_good").symlink_to(widget / "test/good")  # the loader reads it as a defect type
    fp = data_fingerprint(root, "widget")
    assert fp.files["train/good/linked.png"] == fp.files["train/good/000.png"]
    assert fp.files["test/also_good/000.png"] == fp.files["test/good/000.png"]
    assert not [rel for rel in fp.files if "/loop/" in rel]  # a folder above: not walked again
    with open(target, "ab") as f:
        f.write(b"\0")
    assert data_fingerprint(root, "widget").files["train/good/linked.png"] != fp.files["train/good/000.png"]


def test_links_the_loader_refuses_are_never_read_and_count_by_their_sentence(root, tmp_path, monkeypatch):
    """A mask linked to a file outside the data root (the issue's /etc/shadow), a broken and a
    looping link: none is read or hashed; each counts by the loader's sentence, so the grid can
    fingerprint the category and only loading it fails, naming the link."""
    widget = root / "widget"
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$secret")
    mask = widget / MASK
    mask.unlink()
    mask.symlink_to(secret)
    (widget / "train/good/dangling.png").symlink_to(tmp_path / "missing.png")
    (widget / "test/hole/loop.png").symlink_to("loop.png")  # itself
    reads = _count_reads(monkeypatch)
    fp = data_fingerprint(root, "widget")
    assert not [p for p in reads if Path(p).is_symlink()]  # the secret, the dangling and the loop were never read
    assert {MASK, "train/good/dangling.png", "test/hole/loop.png"} <= set(fp.files)
    dataset_words = {"train": ("dangling.png", "broken"), "test": ("loop.png", "loops")}
    for split, words in dataset_words.items():
        with pytest.raises(DatasetError, match=words[1]) as error:
            models.MVTecAD(root, "widget", split, image_size=16)
        assert words[0] in str(error.value)
    (widget / "test/hole/loop.png").unlink()
    with pytest.raises(DatasetError) as error:
        models.MVTecAD(root, "widget", "test", image_size=16)
    assert str(error.value) == (f"{mask} leads to {secret}, outside the data root {root}; only files under the data "
                                "root are read: copy it into the data root (links within the data root work).")


def test_the_fingerprint_hashes_exactly_the_files_the_loader_reads_and_walks_nothing_else(root, tmp_path):
    """Issue 20, item 14: a link in a category's folders to a big tree (or to /proc) the loader
    never reads is not walked; unused masks, nested folders and other files are not listed."""
    widget = root / "widget"
    big = tmp_path / "big_tree"
    for i in range(200):
        (big / f"d{i % 10}" / f"e{i}").mkdir(parents=True)
        shutil.copy(widget / "train/good/000.png", big / f"d{i % 10}" / f"e{i}" / "x.png")
    (widget / "ground_truth" / "big_link").symlink_to(big, target_is_directory=True)
    if Path("/proc/self").is_dir():
        (widget / "ground_truth" / "proc_link").symlink_to("/proc", target_is_directory=True)
    (widget / "test/scratch/nested").mkdir()
    shutil.copy(widget / "train/good/000.png", widget / "test/scratch/nested/000.png")  # the loader reads no subfolder
    shutil.copy(widget / MASK, widget / "ground_truth/scratch/007_mask.png")  # a mask of no image
    (widget / "ground_truth/good").mkdir()
    shutil.copy(widget / MASK, widget / "ground_truth/good/000_mask.png")
    start = time.perf_counter()
    fp = data_fingerprint(root, "widget")
    assert time.perf_counter() - start < 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = [models.MVTecAD(root, "widget", s, image_size=16) for s in ("train", "val", "test")]
    read = {p for ds in splits for p in ds.paths} | {str(m) for m in splits[2].mask_paths if m is not None}
    assert set(fp.files) == {Path(p).relative_to(widget).as_posix() for p in read}
    assert fp.n_files == 8 + 2 + 2 * 2 + 2 * 2


def test_describe_change_is_one_sentence_with_counts_and_the_first_path():
    old = {"test/crack/000.png": "a", "train/good/000.png": "b", "train/good/001.png": "c"}
    new = {"test/crack/000.png": "x", "train/good/000.png": "b", "train/good/002.png": "d"}
    assert describe_change("bottle", old, {**new, "ground_truth/crack/000_mask.png": "m"}) == (
        "data of 'bottle' changed since the row was written: 4 files differ "
        "(1 changed, 2 added, 1 removed; first: ground_truth/crack/000_mask.png)."
    )
    assert describe_change("bottle", old, {**old, "test/crack/000.png": "x"}) == (
        "data of 'bottle' changed since the row was written: 1 file differs (1 changed; first: test/crack/000.png)."
    )
    assert "unchanged" in describe_change("bottle", old, dict(old))


def _count_reads(monkeypatch) -> list:
    reads = []
    real = filehash.hash_file
    monkeypatch.setattr(filehash, "hash_file", lambda path: reads.append(path) or real(path))
    return reads


def test_the_memo_reads_each_file_once_and_rereads_a_changed_one(root, monkeypatch):
    reads = _count_reads(monkeypatch)
    first = data_fingerprint(root, "widget")
    assert len(reads) == first.n_files
    reads.clear()
    assert data_fingerprint(root, "widget") == first
    assert reads == []  # only stat calls

    with open(root / "widget" / MASK, "ab") as f:
        f.write(b"\0")  # new size and mtime
    data_fingerprint(root, "widget")
    assert [p.name for p in reads] == ["000_mask.png"]


def test_an_unreadable_file_is_a_dataset_error_naming_it(root, monkeypatch):
    real = filehash.hash_file

    def refuse_the_mask(path):  # what open() raises for a chmod 000 file when not root
        if str(path).endswith(MASK):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(filehash, "hash_file", refuse_the_mask)
    with pytest.raises(DatasetError) as error:
        data_fingerprint(root, "widget")
    assert str(error.value) == (
        f"cannot read {root / 'widget' / MASK} (Permission denied) to fingerprint the data of 'widget'; "
        "check the file's permissions or remove it."
    )


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_chmod_000_file_is_a_dataset_error_naming_it(root):
    mask = root / "widget" / MASK
    mask.chmod(0)
    try:
        with pytest.raises(DatasetError, match="000_mask.png"):
            data_fingerprint(root, "widget")
    finally:
        mask.chmod(0o644)


def test_a_missing_category_folder_is_a_dataset_error(root):
    with pytest.raises(DatasetError, match="nowhere"):
        data_fingerprint(root, "nowhere")
