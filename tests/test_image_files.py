"""The files of predict (pipeline/image_files.py): the images named by files, folders and patterns,
each once and sorted; heatmap names that follow the images' paths and never clash. The output
folder's refusals are tested through the command line in test_predict.py."""
from __future__ import annotations

from pipeline import image_files


def test_heatmap_names_follow_the_images_paths_and_never_clash(tmp_path):
    paths = [tmp_path / "a" / "001.png", tmp_path / "a" / "001.jpg", tmp_path / "b" / "001.png",
             tmp_path / "b" / "c" / "x.bmp"]
    assert [n.as_posix() for n in image_files.heatmap_names(paths)] == ["a/001.png.png", "a/001.jpg.png", "b/001.png",
                                                                    "b/c/x.png"]
    assert [n.as_posix() for n in image_files.heatmap_names([tmp_path / "one.jpg"])] == ["one.png"]


def test_find_images_sorts_searches_folders_and_expands_patterns(tmp_path):
    for name in ("b/2.png", "a/1.jpg", "a/.hidden.png", ".cache/3.png", "a/notes.txt", "c.PNG"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = image_files.find_images([tmp_path, str(tmp_path / "a" / "*.jpg")])  # the same file twice: once
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.jpg", "b/2.png", "c.PNG"]
    assert image_files.find_images([tmp_path], skip=(tmp_path / "b").resolve()) == [tmp_path / "a" / "1.jpg",
                                                                               tmp_path / "c.PNG"]
