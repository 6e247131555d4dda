"""``export``: a trained job as one ONNX file that scores images without this package.

The graph maps ``image``, float32 (B, C, H, W) in [0, 1] (NCHW; C = 3 in RGB order, or 1 for
gray; H x W the row's input size; any batch size B), to ``map`` (B, H, W), the anomaly map, and
``score`` (B,), the image score, both float32, under the row's scoring rule: the model's
reconstruction scored as ``AnomalyModel.anomaly_map`` and ``scoring.reduce_map`` score it
(``ScoredModel``). An image is defective iff its score is above the threshold. The file's
``metadata_props`` carry what a user needs besides the graph (``metadata``): the threshold, the
input size, channels and preprocessing, the scoring rule, the row's key and the package version.
The image must be prepared as ``models.mvtec.decode`` prepares the training images: upright
(EXIF), alpha composited on black, resized with PIL's antialiased bilinear filter to W x H, /255.

The export uses torch's ``torch.export``-based exporter (``dynamo=True``; it needs ``onnx`` and
``onnxscript``: the TorchScript one cannot trace the top-k size of the image score), and is
verified before the file is written: ``onnxruntime`` runs it on synthetic images at two batch
sizes and its maps must be within ``MAX_MAP_DIFF`` of PyTorch's. A model or scoring rule the
exporter cannot translate is one sentence naming the operator (``ExportError``).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import scoring, size_label
from models.errors import UserError
from models.scoring import ScoreConfig

from .files import atomic_write, make_folder
from .trained import TrainedJob, add_job_arguments, trained_from_args

INPUT_NAME = "image"
OUTPUT_NAMES = ("map", "score")
MAX_MAP_DIFF = 1e-4  # onnxruntime against PyTorch, float32 (measured: ~1e-7 for l2, ~1e-6 for ssim)
VERIFY_BATCHES = (1, 3)  # batch sizes checked; the graph is traced at 2, so both are other sizes
PACKAGE = "recon-anomaly"  # pyproject.toml's name
PREPROCESSING = ("RGB (or gray for 1 channel), upright by EXIF orientation, alpha composited on black, "
                 "resized to input_width x input_height with PIL's antialiased bilinear filter, as float32 / 255, "
                 "layout NCHW")


class ExportError(UserError, RuntimeError):
    """A trained job that cannot be written as ONNX, or whose ONNX graph does not compute its maps."""


class ScoredModel(nn.Module):
    """image (B, C, H, W) in [0, 1] -> (map (B, H, W), score (B,)) of ``model`` under ``score``:
    the computation of ``AnomalyModel.anomaly_map`` and ``scoring.reduce_map``, as one module to export."""

    def __init__(self, model: nn.Module, score: ScoreConfig):
        super().__init__()
        self.model, self.score = model, score

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.model.reconstruct(image)
        maps = scoring.anomaly_map(image, reconstruction, score_map=self.score.score_map,
                                   score_sigma=self.score.score_sigma)  # (B, H, W)
        return maps, scoring.reduce_map(maps, score_reduce=self.score.score_reduce, score_topk=self.score.score_topk)


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


def metadata(job: TrainedJob) -> dict[str, str]:
    """The ONNX file's metadata_props: everything besides the graph needed to use it as the row does."""
    height, width = job.model.config.height, job.model.config.width
    score = job.eval_config.score
    return {
        "threshold": repr(job.threshold),
        "verdict": "defective iff score > threshold",
        "threshold_rule": job.eval_config.threshold_rule,
        "input_height": str(height),
        "input_width": str(width),
        "input_size": size_label(job.image_size),  # "128" or "96x240" (height x width), as the row's image_size
        "channels": str(job.in_channels),
        "channel_order": "RGB" if job.in_channels == 3 else "gray",
        "input_range": "[0, 1]",
        "layout": "NCHW",
        "preprocessing": PREPROCESSING,
        "outputs": "map: float32 (B, H, W) anomaly map, larger = more anomalous; score: float32 (B,) image score",
        "scoring_rule": score.name,
        "scoring_config": json.dumps(score.to_dict(), sort_keys=True),
        "model": job.name,
        "dataset": job.dataset,
        "category": job.category,
        "seed": "" if job.seed is None else str(job.seed),
        "config_hash": job.config_hash,
        "train_hash": job.train_hash,
        "package": PACKAGE,
        "package_version": package_version(),
        "torch_version": str(torch.__version__),
    }


def synthetic_images(n: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded images (n, C, H, W) in [0, 1]: smooth gradients with noise, not a constant."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")  # (H, W)
    ramp = (0.3 + 0.4 * (xx + yy) / 2)[None, None]  # (1, 1, H, W)
    return (ramp + 0.15 * torch.randn(n, channels, height, width, generator=g)).clamp(0, 1)


def _why(error: Exception) -> str:
    """The exporter's reason in a few words: the operator it has no ONNX function for, or the first line."""
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(c) for c in chain)
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return (f"the exporter has no ONNX operator for {op.group(1)}, and torch has no decomposition of it into "
                "ONNX's operators")
    first = next((line.strip() for c in reversed(chain) for line in str(c).splitlines() if line.strip()), "")
    return f"{type(chain[-1]).__name__}: {first[:200]}"


def to_onnx(job: TrainedJob) -> bytes:
    """The job's ``ScoredModel`` as an ONNX model (bytes) with ``metadata``; ExportError if it cannot be."""
    import onnx  # slow to import (~1 s, and the exporter's onnxscript ~2.5 s): only export needs them

    model = job.model.to("cpu", memory_format=torch.contiguous_format).eval()  # evaluation may leave it NHWC
    scored = ScoredModel(model, job.eval_config.score).eval()
    config = model.config
    example = synthetic_images(2, config.in_channels, config.height, config.width)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes are not ours
            program = torch.onnx.export(scored, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes={"image": {0: batch}},
                                        external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - every exporter failure is said as why this job cannot be exported
        raise ExportError(f"cannot export {job.describe()} with scoring rule {job.eval_config.score.name} to ONNX: "
                          f"{_why(e)}; every built-in model and scoring rule exports, so replace that operator in the "
                          "model's or the scoring rule's code.") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(job))
    return proto.SerializeToString()


@dataclass
class Verification:
    """How far onnxruntime's outputs are from PyTorch's on synthetic images."""

    max_map_diff: float
    max_score_diff: float
    n_images: int


def verify(onnx_bytes: bytes, job: TrainedJob) -> Verification:
    """Run the ONNX model with onnxruntime at ``VERIFY_BATCHES`` against the model's ``anomaly_map``
    in PyTorch; ExportError if a map differs by more than ``MAX_MAP_DIFF`` (or has another shape)."""
    import onnxruntime  # slow to import, and only export needs it

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    model, score = job.model.to("cpu", memory_format=torch.contiguous_format), job.eval_config.score
    config = model.config
    map_diff = score_diff = 0.0
    for k, n in enumerate(VERIFY_BATCHES):
        images = synthetic_images(n, config.in_channels, config.height, config.width, seed=1 + k)
        # Against the model's own interface, not ScoredModel: a model that scores its own way is caught here.
        maps = model.anomaly_map(images, score)
        scores = scoring.reduce_map(maps, score_reduce=score.score_reduce, score_topk=score.score_topk)
        got_maps, got_scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
        if got_maps.shape != tuple(maps.shape) or got_scores.shape != tuple(scores.shape):
            raise ExportError(f"the ONNX graph of {job.describe()} gives maps of shape {got_maps.shape} for a batch "
                              f"of {n}, PyTorch {tuple(maps.shape)}; it was not written.")
        map_diff = max(map_diff, float(np.abs(got_maps - maps.numpy()).max()))
        score_diff = max(score_diff, float(np.abs(got_scores - scores.numpy()).max()))
    if not map_diff <= MAX_MAP_DIFF:  # also NaN
        raise ExportError(f"the ONNX graph of {job.describe()} computes maps up to {map_diff:.2g} away from "
                          f"PyTorch's (allowed: {MAX_MAP_DIFF:g}), so it was not written; report it with the "
                          "model's settings.")
    return Verification(map_diff, score_diff, sum(VERIFY_BATCHES))


@dataclass
class Exported:
    path: Path
    verification: Verification
    size_bytes: int
    seconds: float

    def summary(self, job: TrainedJob) -> str:
        v = self.verification
        return (f"wrote {self.path} ({job.describe()}, {self.size_bytes / 2**20:.1f} MiB, threshold "
                f"{job.threshold:.6g}) in {self.seconds:.1f} s; onnxruntime matches PyTorch on {v.n_images} "
                f"synthetic images: max |map diff| {v.max_map_diff:.1e}, max |score diff| {v.max_score_diff:.1e}")


def export_onnx(job: TrainedJob, out) -> Exported:
    """Write ``job`` as the ONNX file ``out`` (atomically, only once verified)."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    if out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a folder; name the ONNX file to write, e.g. {out / 'model.onnx'}.")
    make_folder(out.parent, what="folder of the ONNX file", fix="pass another --out", error=ExportError)
    data = to_onnx(job)
    checked = verify(data, job)
    with atomic_write(out, "wb") as f:
        f.write(data)
    return Exported(out, checked, len(data), time.perf_counter() - start)


def add_parser(sub) -> None:
    """The ``export`` command (``python -m pipeline export``)."""
    p = sub.add_parser(
        "export", help="write a trained job as an ONNX file (map and score, threshold in its metadata)",
        description="Write the trained model of a results row (or a checkpoint) as one ONNX file mapping a float32 "
                    "image (B, C, H, W) in [0, 1], RGB, to its anomaly map (B, H, W) and score (B,) under the "
                    "row's scoring rule, with the threshold, input size and the row's key in its metadata; "
                    "checked against PyTorch with onnxruntime before it is written.",
        epilog="Exit status: 0 written, 2 bad input or a model that cannot be exported (one sentence on stderr).")
    add_job_arguments(p)
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    job = trained_from_args(args)
    print(export_onnx(job, args.out).summary(job))
    return 0

