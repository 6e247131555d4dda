"""Real data anyone can install, written in MVTec layout: ELPV (``python -m pipeline real-data elpv``).

ELPV (Buerhop-Lutz et al., EU PVSEC 2018; Deitsch et al., Solar Energy 2019): 2,624
electroluminescence images of solar cells, 300 x 300 px 8-bit grayscale, each with an
expert's defect probability (0, 1/3, 2/3 or 1) and the type of the module it was cut from
(mono- or polycrystalline). The PyPI package ``elpv-dataset`` ships them as
``elpv_dataset/data/labels.csv`` (one line per image: ``images/cell0001.png  1.0  mono``)
and ``elpv_dataset/data/images/*.png``; they are read here as files, the package is never
imported, so the tests use a tiny folder of the same layout (``source=``).

Written as one category per cell type (``elpv_mono``, ``elpv_poly``):

- the p = 0 cells, in an order drawn from the seed (SHA-256 of seed and file name, so the
  order does not depend on a library's random stream): the first ``max_train`` go to
  ``train/good``, all others to ``test/good``, which keeps at least ``test_good_fraction``
  of them;
- the p = 1 cells go to ``test/defect`` (one defect type: the labels say how sure, not what);
- the uncertain p = 1/3 and 2/3 cells are left out, and counted in the output.

No ``ground_truth/``: the labels are per image, so only the image metrics are defined.
Files are copied byte for byte under the package's own names, so a row's image can be traced
back to its label. The root's ``DATASET.json`` names the dataset ``elpv`` (the rows'
``dataset``), declares the category types and records the split's settings: a rerun with the
same settings into its own output is a no-op, with other settings it is refused, and a folder
that holds anything else is never written into. ``README.txt`` and ``license.txt`` travel with
the images (CC BY-NC-SA 4.0).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import ConfigError, DatasetError
from models.mvtec import MARKER_FILE

from .files import is_plain_name, make_folder

DATASETS = ("elpv",)  # what `python -m pipeline real-data NAME` can write
DEFAULT_OUT = "data/{name}"  # git-ignored, like data/demo
DEFAULT_MAX_TRAIN = 240  # train/good per category: one job stays in MVTec AD's size range on a 2-core CPU
DEFAULT_TEST_GOOD_FRACTION = 0.25  # at least this share of the p = 0 cells is kept for test/good
FORMAT = 1  # bump when the layout or the split rule changes: an older output is then refused, not reused

PACKAGE = "elpv-dataset"  # the PyPI name; the import name is elpv_dataset
INSTALL_HINT = "pip install elpv-dataset (about 90 MB; or pip install -e .[elpv])"
SOURCE_URL = "https://github.com/zae-bayern/elpv-dataset"
LICENSE_NAME = "CC BY-NC-SA 4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
# Solar cells fill the frame (no outline to place, like MVTec's tile or grid): a texture for the tables.
CATEGORY_TYPE = "texture"
DEFECT_FOLDER = "defect"
CELL_TYPE = re.compile(r"[a-z][a-z0-9]*\Z")  # a cell type becomes a category name: elpv_<type>
CITATIONS = (
    "Buerhop-Lutz, C.; Deitsch, S.; Maier, A.; Gallwitz, F.; Berger, S.; Doll, B.; Hauch, J.; Camus, C. & "
    "Brabec, C. J. A Benchmark for Visual Identification of Defective Solar Cells in Electroluminescence "
    "Imagery. EU PVSEC 2018. DOI 10.4229/35thEUPVSEC20182018-5CV.3.15",
    "Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & Riess, C. Automatic "
    "classification of defective photovoltaic module cells in electroluminescence images. Solar Energy 185 "
    "(2019) 455-468. DOI 10.1016/j.solener.2019.02.067",
)


@dataclass(frozen=True)
class Cell:
    """One labelled image of labels.csv."""

    name: str  # its file name in images/, kept in the output
    probability: float  # the experts' defect probability: 0, 1/3, 2/3 or 1
    cell_type: str  # "mono" or "poly"


@dataclass(frozen=True)
class ElpvSource:
    """Where the package's files are: ``folder`` holds labels.csv and images/."""

    folder: Path
    version: str | None = None  # the installed package's version; None for a folder given by hand

    @property
    def labels(self) -> Path:
        return self.folder / "labels.csv"

    @property
    def images(self) -> Path:
        return self.folder / "images"


@dataclass
class ElpvSplit:
    """What goes where: category -> MVTec folder ("train/good", "test/good", "test/defect") ->
    file names (sorted), and category -> probability ("1/3", "2/3") -> cells left out."""

    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    left_out: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {c: {**{k: len(v) for k, v in folders.items()}, **{f"left out (p = {p})": n
                                                                   for p, n in self.left_out[c].items()}}
                for c, folders in self.files.items()}


@dataclass(frozen=True)
class ElpvOutput:
    """What ``write_elpv`` did: the root, the split's counts, and whether it wrote (False: the
    root already held this very split)."""

    root: Path
    counts: dict[str, dict[str, int]]
    written: bool
    summary: str  # the README.txt text: counts, what was left out, the licence, the source

    def message(self) -> str:
        """What the command prints: the summary, what was done, and how to train on it."""
        done = (f"Wrote {self.root}." if self.written else
                f"{self.root} already holds this split (same labels, seed and options): nothing written.")
        return f"{self.summary}{done}\nTrain on it: python -m pipeline run --data-root {self.root}"


# --------------------------------------------------------------------------- the package's files


def locate_elpv() -> ElpvSource:
    """The installed package's data folder, found without importing the package; a DatasetError
    that says how to install it when it is not there."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"the ELPV images come from the PyPI package {PACKAGE}, which is not installed: "
                           f"{INSTALL_HINT}, or pass --source DIR, a folder holding its labels.csv and images/.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # importable but not installed by pip (a checkout on the path)
        version = None
    return ElpvSource(folder, version)


def _probability(text: str, where: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = math.nan
    if not 0.0 <= p <= 1.0:  # also NaN
        raise DatasetError(f"{where}: the defect probability {text!r} is not a number from 0 to 1; "
                           f"reinstall {PACKAGE} ({INSTALL_HINT}) or fix that line.")
    return p


def read_labels(source: ElpvSource) -> list[Cell]:
    """The cells of labels.csv (whitespace-separated: ``images/<file>``, probability, cell type),
    each image checked to be in images/; a DatasetError naming the line or the file otherwise."""
    try:
        lines = source.labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise DatasetError(f"cannot read the ELPV labels {str(source.labels)!r} ({why}); pass --source a folder "
                           f"holding labels.csv and images/, or reinstall {PACKAGE}: {INSTALL_HINT}.") from None
    cells, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number} of {source.labels}"
        parts = line.split()
        path, _, name = parts[0].partition("/") if parts else ("", "", "")
        if len(parts) != 3 or path != "images" or not is_plain_name(name) or name in seen:
            raise DatasetError(f"{where} is not 'images/<file> <probability> <cell type>' of an image not listed "
                               f"before ({line.strip()!r}); reinstall {PACKAGE} ({INSTALL_HINT}) or fix that line.")
        cell_type = parts[2].lower()
        if not CELL_TYPE.match(cell_type):
            raise DatasetError(f"{where}: the cell type {parts[2]!r} is not a plain lower-case word such as mono "
                               f"or poly; reinstall {PACKAGE} ({INSTALL_HINT}) or fix that line.")
        seen.add(name)
        cells.append(Cell(name, _probability(parts[1], where), cell_type))
    if not cells:
        raise DatasetError(f"{source.labels} lists no images; reinstall {PACKAGE}: {INSTALL_HINT}.")
    present = {p.name for p in source.images.iterdir()} if source.images.is_dir() else set()
    missing = [c.name for c in cells if c.name not in present]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) that {source.labels} lists are not in {source.images} "
                           f"(first: {missing[0]}); reinstall {PACKAGE}: {INSTALL_HINT}.")
    return cells


# --------------------------------------------------------------------------- the split


def check_options(*, max_train: int, test_good_fraction: float) -> None:
    if isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 2:
        raise ConfigError(f"--max-train must be a whole number of at least 2 (training needs 2 images), "
                          f"got {max_train!r}.")
    if not 0.0 < test_good_fraction < 1.0:
        raise ConfigError(f"--test-good-fraction must be above 0 and below 1 (the share of the defect-free cells "
                          f"kept for test/good), got {test_good_fraction!r}.")


def seeded_order(names, seed: int) -> list[str]:
    """``names`` in an order drawn from ``seed``: by the SHA-256 of seed and name, the same on every
    machine and version, and a cell keeps its place whatever other cells the labels hold."""
    return sorted(names, key=lambda n: hashlib.sha256(f"elpv/{seed}/{n}".encode()).hexdigest())


def thirds(p: float) -> str:
    """An uncertain probability as it is written in the output: "1/3", "2/3", else its value."""
    k = round(p * 3)
    return f"{k}/3" if math.isclose(p * 3, k, abs_tol=1e-6) else f"{p:.3g}"


def split_cells(cells: list[Cell], *, seed: int, max_train: int, test_good_fraction: float) -> ElpvSplit:
    """One category per cell type: train/good at most ``max_train`` p = 0 cells (seeded choice),
    test/good the other p = 0 cells (at least ``test_good_fraction`` of them), test/defect the
    p = 1 cells; the cells in between counted as left out."""
    check_options(max_train=max_train, test_good_fraction=test_good_fraction)
    split = ElpvSplit()
    for cell_type in sorted({c.cell_type for c in cells}):
        category = f"elpv_{cell_type}"
        mine = [c for c in cells if c.cell_type == cell_type]
        good = seeded_order([c.name for c in mine if c.probability == 0.0], seed)
        n_train = min(max_train, len(good) - math.ceil(test_good_fraction * len(good)))
        if n_train < 2:
            raise DatasetError(f"only {len(good)} defect-free {cell_type} cells are in the labels, too few for 2 "
                               f"training images and a test share of {test_good_fraction:g}; lower "
                               "--test-good-fraction or use the full elpv-dataset.")
        split.files[category] = {
            "train/good": sorted(good[:n_train]),
            "test/good": sorted(good[n_train:]),
            f"test/{DEFECT_FOLDER}": sorted(c.name for c in mine if c.probability == 1.0),
        }
        uncertain = [thirds(c.probability) for c in mine if 0.0 < c.probability < 1.0]
        split.left_out[category] = {p: uncertain.count(p) for p in sorted(set(uncertain))}
    return split


# --------------------------------------------------------------------------- the output folder


def make_marker(split: ElpvSplit, source: ElpvSource, *, seed: int, max_train: int,
                test_good_fraction: float) -> dict:
    """The root's DATASET.json: the dataset's name, the category types, and ``split``, the
    settings that decide every file (what a rerun compares), with the counts for a reader."""
    labels_sha256 = hashlib.sha256(source.labels.read_bytes()).hexdigest()
    return {
        "name": "elpv", "format": FORMAT,
        "split": {"seed": seed, "max_train": max_train, "test_good_fraction": test_good_fraction,
                  "labels_sha256": labels_sha256},
        "categories": {c: CATEGORY_TYPE for c in split.files},
        "counts": split.counts(),
        "source": f"{PACKAGE} {source.version or '(its files, given with --source)'}, {SOURCE_URL}",
        "license": f"{LICENSE_NAME}, {LICENSE_URL}",
    }


def expected_files(split: ElpvSplit) -> set[str]:
    """Every file an output of ``split`` holds, relative to its root, with "/"."""
    names = {MARKER_FILE, "README.txt", "license.txt"}
    return names | {f"{c}/{folder}/{n}" for c, folders in split.files.items()
                    for folder, files in folders.items() for n in files}


def files_under(root: Path) -> set[str]:
    return {(Path(d) / f).relative_to(root).as_posix() for d, _, files in os.walk(root) for f in files}


def read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _settings(split: dict) -> str:
    return (f"seed {split.get('seed')}, --max-train {split.get('max_train')}, --test-good-fraction "
            f"{split.get('test_good_fraction')}")


def check_out_folder(out: Path, marker: dict, split: ElpvSplit) -> bool:
    """True if ``out`` already holds exactly this output (nothing to write), False if it is absent
    or an empty folder; else a DatasetError that says what is there and how to go on."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DatasetError(f"--out {out} is a file, not a folder; pass a new or empty folder.")
    if not any(out.iterdir()):
        return False
    old = read_marker(out)
    if not (old and old.get("name") == "elpv" and isinstance(old.get("split"), dict)):
        raise DatasetError(f"{out} is not empty and is not an ELPV output of this command (its {MARKER_FILE} does "
                           "not name elpv); pass --out a new or empty folder.")
    if old.get("format") != FORMAT or old["split"].get("labels_sha256") != marker["split"]["labels_sha256"]:
        raise DatasetError(f"{out} holds an ELPV output of another version of this command or of other labels "
                           f"(another {PACKAGE}); delete {out} and run again, or pass another --out.")
    if old["split"] != marker["split"]:
        raise DatasetError(f"{out} holds the ELPV split of {_settings(old['split'])}, not of "
                           f"{_settings(marker['split'])}; to keep it, train on it as it is (or rerun with those "
                           f"options), else delete {out} or pass another --out to write this one.")
    found, wanted = files_under(out), expected_files(split)
    if found != wanted:
        odd = sorted(wanted - found) or sorted(found - wanted)
        raise DatasetError(f"{out} holds the ELPV split of {_settings(marker['split'])} but its files changed since "
                           f"({len(wanted - found)} missing, {len(found - wanted)} added; first: {odd[0]}); "
                           f"delete {out} and run again to rewrite it.")
    return True


# --------------------------------------------------------------------------- the text files


def describe(split: ElpvSplit, source: ElpvSource, *, seed: int, max_train: int, test_good_fraction: float) -> str:
    """The counts per category and folder, what was left out, the rule, the licence and the source."""
    counts = split.counts()
    columns = ["train/good", "test/good", f"test/{DEFECT_FOLDER}"]
    out_of = sorted({p for c in split.left_out.values() for p in c})
    header = ["category", *columns, *(f"left out p={p}" for p in out_of)]
    rows = [[c, *(str(counts[c][k]) for k in columns), *(str(split.left_out[c].get(p, 0)) for p in out_of)]
            for c in split.files]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    table = "\n".join("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                                       enumerate(zip(r, widths))) for r in [header, *rows])
    version = f"{PACKAGE} {source.version}" if source.version else f"the files of {source.folder}"
    return "\n".join([
        f"ELPV solar-cell images (from {version}) in MVTec AD layout, one category per cell type, seed {seed}:",
        table,
        f"Defect probability 0: defect-free; at most {max_train} per category (a seeded choice) in train/good (the "
        f"pipeline holds 10 % of them out as val), the others in test/good (at least {100 * test_good_fraction:.3g} "
        f"% of them). Probability 1: test/{DEFECT_FOLDER}. The uncertain cells (probability 1/3 and 2/3) are left "
        "out. No ground_truth masks (the labels are per image): image metrics only, pixel metrics are NaN.",
        "Files are copied unchanged from the package, under its file names (labels.csv names each one).",
        f"Licence: {LICENSE_NAME} ({LICENSE_URL}): non-commercial use, attribution, share alike; see license.txt.",
        f"Source: {SOURCE_URL} (PyPI: {PACKAGE}).",
    ]) + "\n"


def license_text(source: ElpvSource) -> str:
    """license.txt: the notice, the citations, and the package's own licence file when installed."""
    text = "\n".join([
        "ELPV dataset: electroluminescence images of functional and defective solar cells.",
        f"Source: {SOURCE_URL} (PyPI: {PACKAGE}{' ' + source.version if source.version else ''}).",
        f"Licence: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International ({LICENSE_NAME}), "
        f"{LICENSE_URL}. For commercial use, contact the authors.",
        "This folder is an adaptation: a selection of the images, copied unchanged into another folder layout; "
        "it is shared under the same licence.",
        "Please cite:", *(f"  {c}" for c in CITATIONS), "",
    ])
    if source.version:  # the installed package's licence file, word for word
        try:
            files = importlib.metadata.distribution(PACKAGE).files or []
            for f in files:
                if Path(str(f)).name.upper().startswith("LICENSE"):
                    text += "\n" + Path(f.locate()).read_text(encoding="utf-8")
                    break
        except (importlib.metadata.PackageNotFoundError, OSError, UnicodeDecodeError):
            pass  # the notice above names the licence; the full text is a courtesy
    return text


# --------------------------------------------------------------------------- writing


def copy_split(tmp: Path, split: ElpvSplit, source: ElpvSource) -> None:
    for category, folders in split.files.items():
        for folder, names in folders.items():
            target = tmp / category / folder
            target.mkdir(parents=True)
            for name in names:
                shutil.copyfile(source.images / name, target / name)  # the bytes as shipped: no re-encode


def publish(tmp: Path, out: Path) -> None:
    """Give the finished ``tmp`` the name ``out``, which is absent or an empty folder (checked
    before): an empty folder is kept (its permissions, a shell standing in it) and filled, the
    marker last, so a move cut short is never taken for a complete output."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == MARKER_FILE):
        os.replace(entry, out / entry.name)
    tmp.rmdir()


def write_elpv(out, *, seed: int = 0, max_train: int = DEFAULT_MAX_TRAIN,
               test_good_fraction: float = DEFAULT_TEST_GOOD_FRACTION, source=None) -> ElpvOutput:
    """Write ELPV in MVTec layout to ``out`` (its root); ``source`` is a folder holding labels.csv
    and images/ (default: the installed package). Written into a temporary sibling folder renamed
    at the end, so an error or Ctrl-C leaves no half dataset behind."""
    check_options(max_train=max_train, test_good_fraction=test_good_fraction)
    source = locate_elpv() if source is None else ElpvSource(Path(source).expanduser())
    split = split_cells(read_labels(source), seed=seed, max_train=max_train, test_good_fraction=test_good_fraction)
    given = Path(out).expanduser()
    # A linked folder stays a link (written where it points); "." and ".." get a name for the temporary sibling.
    out = Path(os.path.realpath(given)) if given.is_symlink() or given.name in ("", "..") else given
    options = dict(seed=seed, max_train=max_train, test_good_fraction=test_good_fraction)
    marker = make_marker(split, source, **options)
    summary = describe(split, source, **options)
    if check_out_folder(out, marker, split):
        return ElpvOutput(given, split.counts(), written=False, summary=summary)
    make_folder(out.parent, what="folder for the ELPV output", fix="pass --out a folder you can write to",
                error=DatasetError)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        copy_split(tmp, split, source)
        (tmp / "README.txt").write_text(summary, encoding="utf-8")
        (tmp / "license.txt").write_text(license_text(source), encoding="utf-8")
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        publish(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        where = f": {e.filename}" if e.filename else ""
        raise DatasetError(f"cannot write the ELPV dataset to {str(out)!r} ({e.strerror or e}{where}); pass --out a "
                           "folder you can write to, with about 100 MB free.") from None
    except BaseException:  # also Ctrl-C: no hidden half dataset is left beside ``out``
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ElpvOutput(given, split.counts(), written=True, summary=summary)
