"""A dataset in the MVTec AD layout, decoded once into uint8 tensors.

Layout (Bergmann et al., "MVTec AD", CVPR 2019)::

    <root>/<category>/train/good/*.png            defect-free training images
    <root>/<category>/test/good/*.png             defect-free test images
    <root>/<category>/test/<defect>/*.png         defective test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   their pixel masks

Images and masks may be in any format Pillow decodes (``IMAGE_EXTENSIONS``). A mask may also
be named ``<stem>.<ext>``, in any letter case, bit depth or colour mode (its non-zero pixels,
in any channel, are the defect); one left beside its image as ``test/<defect>/<stem>_mask.*``
is used as the mask, never as a test image. docs/faults.md lists what else is accepted,
warned about or refused.

Any folder in this layout is a category (users bring their own products). One module per
concern, each importing only those listed after it:

- ``dataset``: ``MVTecAD``, one split of one category, decoded once (``SPLITS``, ``DEFAULT_VAL_FRACTION``);
- ``notes``: the warnings a split gives about odd files;
- ``cache``: the process-wide memory cache and the ``cache_dir`` disk cache of decoded files,
  keyed by image size, channels and the file's content hash (``models.filehash``);
- ``decode``: pixels and masks from one file, every PIL mode (``DECODE_VERSION``, ``MASK_VERSION``);
- ``listing``: the files of a category (``list_files``, the one listing the data fingerprint
  hashes too), the categories of a root, the dataset's name and a category's type; only files
  under the data root are read (links within it work).

The names below are the package's public interface: ``from models.mvtec import X``.
"""
from __future__ import annotations

from .cache import CACHE_FORMAT, MEMORY_CACHE_LIMIT, clear_memory_cache
from .dataset import DEFAULT_VAL_FRACTION, SPLITS, MVTecAD
from .decode import DECODE_VERSION, HUGE_PIXELS, MASK_VERSION
from .listing import (
    GOOD_FOLDER_NAMES,
    IMAGE_EXTENSIONS,
    MARKER_FILE,
    MASK_FOLDER_NAMES,
    MAX_DATASET_NAME,
    MVTEC_FOLDER_NAMES,
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    UNDECODED_FORMATS,
    CategoryFiles,
    category_type,
    dataset_name,
    image_dimensions,
    list_categories,
    list_files,
)
from .notes import INVERTED_MASK_SHARE

__all__ = [
    "CACHE_FORMAT", "DECODE_VERSION", "DEFAULT_VAL_FRACTION", "GOOD_FOLDER_NAMES", "HUGE_PIXELS", "IMAGE_EXTENSIONS",
    "INVERTED_MASK_SHARE", "MARKER_FILE", "MASK_FOLDER_NAMES", "MASK_VERSION", "MAX_DATASET_NAME",
    "MEMORY_CACHE_LIMIT", "MVTEC_FOLDER_NAMES", "MVTEC_OBJECTS", "MVTEC_TEXTURES", "SPLITS", "UNDECODED_FORMATS",
    "CategoryFiles", "MVTecAD", "category_type", "clear_memory_cache", "dataset_name", "image_dimensions",
    "list_categories", "list_files",
]
