"""Checkpoints: where a job's trained model is kept, and how it is written and read back.

A checkpoint holds plain data only (state dict of tensors, model name, config dict, results
row, training config, training history) and is read with ``torch.load(weights_only=True)``, so a checkpoint
file can never run code on load. It is written to a temporary file and renamed into place,
so a killed run never leaves half a checkpoint. Its path is
``<checkpoint_dir>/<dataset>/<category>/<model>-<train_hash>.pt`` (``checkpoint_path``; the
train hash covers what changes the weights, not how they are evaluated).
"""
from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch

from models import MODEL_NAMES, MODELS, model_config
from models.errors import CheckpointError, ConfigError

from .files import atomic_write, make_folder, plain_name
from .train import TrainConfig

CHECKPOINT_FORMAT = 1
# Model-config keys of checkpoints written before the scoring rule became an evaluation setting.
DEFAULT_CHECKPOINT_DIR = "checkpoints"  # git-ignored
# The largest record of plain data (config, row, loss history: a few kB) a checkpoint may declare,
# and the slack over the model's own tensor bytes, before anything is unpacked.
MAX_PLAIN_DATA_BYTES = 64 << 20
TENSOR_SLACK_BYTES = 1 << 20


def _plain(value):
    """Numpy scalars and nested containers -> builtin types (weights_only can load those)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):  # str subclasses (torch.__version__ is a TorchVersion) would need a global
        return str(value)
    return value


def _json_norm(d: dict) -> dict:
    return json.loads(json.dumps(_plain(d), sort_keys=True))  # tuples -> lists, like a file round trip


def checkpoint_bytes(model, *, name: str, row: dict | None = None, train_config: TrainConfig | None = None,
                     history: dict | None = None, training: dict | None = None) -> bytes:
    """The bytes of a checkpoint file, {format, model, config, state_dict, row, train_config,
    history, training} (a Ray task returns them; the driver writes them, ``write_checkpoint``).
    ``history`` is ``train.fit``'s (the loss curves); ``training`` the row's training columns,
    which a re-evaluated row copies."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": name,
        "config": _plain(model.config.to_dict()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "row": _plain(row) if row is not None else None,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "history": _plain(history) if history is not None else None,
        "training": _plain(training) if training is not None else None,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def write_checkpoint(path, data: bytes) -> Path:
    """Write checkpoint bytes (``checkpoint_bytes``) to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    make_checkpoint_dir(path.parent)
    try:
        with atomic_write(path, "wb") as f:
            f.write(data)
    except (OSError, RuntimeError) as e:  # disk full or file size limit
        why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        fix = "make the folder writable" if isinstance(e, PermissionError) else "free disk space"
        raise CheckpointError(f"cannot write the checkpoint {str(path)!r} ({why}); "
                              f"{fix} or pass another --checkpoint-dir.") from None
    return path


def save_checkpoint(path, model, *, name: str, row: dict | None = None, train_config: TrainConfig | None = None,
                    history: dict | None = None, training: dict | None = None) -> Path:
    """Write the checkpoint of ``model`` (``checkpoint_bytes``) to ``path`` atomically."""
    return write_checkpoint(path, checkpoint_bytes(model, name=name, row=row, train_config=train_config,
                                                   history=history, training=training))


def _pickle_imports(path: Path) -> bool:
    """True if ``path`` is a raw pickle that imports globals (what a code-running pickle does).
    Only reads opcodes with ``pickletools``: nothing is unpickled."""
    if zipfile.is_zipfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST") for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a pickle at all
        return False


def _damage(path: Path, error: Exception) -> str | None:
    """How ``path`` is damaged, if it looks like a checkpoint that was cut short or overwritten:
    empty, or a zip archive (what ``torch.save`` writes) that cannot be read; None for a file
    that never was one (text, an image ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"it cannot be read: {e.strerror}"
    if not head:
        return "it is empty, 0 bytes"
    if head == b"PK\x03\x04":
        first = str(error).strip().split(". ")[0][:120] or type(error).__name__
        return f"truncated or partly overwritten: {first}"
    return None


def _amount(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def tensor_bytes(model) -> int:
    """The bytes of the tensors ``model`` saves (its state dict): what its checkpoint's weight records hold."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_declared_sizes(path, *, expected_tensor_bytes: int | None = None) -> None:
    """Refuse a checkpoint whose zip records declare more data than it can hold, before anything is
    unpacked (``torch.load`` allocates what a record declares). ``torch.save`` stores its records
    as they are, so a record declared larger than its stored bytes would inflate (a 3 MB file to
    3 GiB); and a model's tensors are ``expected_tensor_bytes`` (``tensor_bytes``), when known. A
    file that is not a readable zip is left to ``torch.load``, which says what it is."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    declared = sum(r.file_size for r in records)
    fix = "delete it and run that job again with --force to retrain it"
    if any(r.file_size > r.compress_size for r in records) or sum(r.compress_size for r in records) > size:
        raise CheckpointError(
            f"refused to load {str(path)!r}: its zip records declare {_amount(declared)} uncompressed in a file of "
            f"{_amount(size)}, but torch.save stores its records as they are, so this file was not written by this "
            f"package and unpacking it could exhaust memory; {fix}."
        )
    tensors = sum(r.file_size for r in records if "/data/" in r.filename)
    plain = declared - tensors
    too_many = expected_tensor_bytes is not None and tensors > 2 * expected_tensor_bytes + TENSOR_SLACK_BYTES
    if too_many or plain > MAX_PLAIN_DATA_BYTES:
        what = (f"{_amount(tensors)} of tensors, far more than the {_amount(expected_tensor_bytes)} of the model it "
                "should hold" if too_many else f"{_amount(plain)} of plain data (a checkpoint holds a few kB)")
        raise CheckpointError(f"refused to load {str(path)!r}: its zip records declare {what}, so it was not written "
                              f"for this job and unpacking it could exhaust memory; {fix}.")


def read_checkpoint(path, *, expected_tensor_bytes: int | None = None) -> dict:
    """The checkpoint's payload, checked; plain data only (never unpickles code), and never more
    data than the file holds or than ``expected_tensor_bytes`` (``check_declared_sizes``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path.")
    check_declared_sizes(path, expected_tensor_bytes=expected_tensor_bytes)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means "not a checkpoint we can load"
        # weights_only refuses imports of arbitrary globals (functions, classes): code could run.
        unsafe = (any(w in str(e) for w in ("GLOBAL", "Unsupported global", "Unsupported class"))
                  or _pickle_imports(path))
        if unsafe:
            raise CheckpointError(
                f"refused to load {str(path)!r}: it contains Python objects other than tensors and plain data, "
                "and loading it could run code; use a checkpoint written by this package."
            ) from None
        damage = _damage(path, e)
        if damage:  # most likely ours, cut short by a copy or a full disk: the fix is to retrain, not to find another
            raise CheckpointError(
                f"refused to load {str(path)!r}: the file is damaged ({damage}), so it is not a PyTorch checkpoint "
                "as it stands; delete it and run that job again with --force to retrain it."
            ) from None
        raise CheckpointError(
            f"refused to load {str(path)!r}: it is not a PyTorch checkpoint ({type(e).__name__}); "
            "use a checkpoint written by this package."
        ) from None
    keys = {"format", "model", "config", "state_dict"}
    if not isinstance(payload, dict) or not keys <= set(payload):
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint of this package (it lacks model, config and state_dict)."
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {payload['format']!r}; this version reads {CHECKPOINT_FORMAT}."
        )
    return payload


def load_checkpoint(path, *, model: str | None = None, config=None, device="cpu"):
    """Rebuild the model stored in ``path``; ``model``/``config`` (name, dict or ModelConfig)
    are what the caller expects, and a checkpoint of anything else is refused with the reason.
    The checkpoint's payload is kept as ``m.checkpoint`` (row, train_config). A file declaring far
    more tensor data than that model holds is refused before it is unpacked."""
    expected = None  # the model the caller expects, built once: its size bounds the file, then it takes the weights
    if model in MODELS and config is not None:
        try:
            expected = MODELS[model](config if hasattr(config, "to_dict") else model_config(model, **dict(config)))
        except (ConfigError, TypeError):  # said below, as a config that differs from the stored one
            pass
    payload = read_checkpoint(path, expected_tensor_bytes=None if expected is None else tensor_bytes(expected))
    name, stored = payload["model"], dict(payload["config"])
    where = repr(str(path))
    if name not in MODELS:
        raise CheckpointError(f"{where} holds an unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
    if model is not None and model != name:
        raise CheckpointError(f"{where} holds a {name} model, not a {model}; load it as {name!r}.")
    if config is not None:
        want = _json_norm(config.to_dict() if hasattr(config, "to_dict") else dict(config))
        have = _json_norm(stored)
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            detail = ", ".join(f"{k}={have.get(k)!r} (expected {want.get(k)!r})" for k in diff[:4])
            raise CheckpointError(f"{where} was trained with a different {name} config: {detail}.")
    try:
        m = expected if expected is not None else MODELS[name](model_config(name, **stored))
        m.load_state_dict(payload["state_dict"])
    except (ConfigError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where} does not match the {name} model of this version: {first}") from None
    m.checkpoint = {k: payload.get(k) for k in ("row", "train_config", "history", "training")}
    return m.to(device).eval()


def make_checkpoint_dir(folder) -> Path:
    """Create ``folder`` (and its parents) for checkpoints, or say in one sentence why not."""
    return make_folder(folder, what="checkpoint folder", fix="pass another --checkpoint-dir", error=CheckpointError)


def checkpoint_path(checkpoint_dir, *, dataset: str, category: str, model: str, train_hash: str) -> Path:
    """Where the model trained by (dataset, category, model, train_hash) is kept (``JobSpec.train_hash``).
    Each part is a plain name (``files.plain_name``),
    so the path stays inside ``checkpoint_dir`` whatever the names (they may come from a CSV or a marker)."""
    folder = Path(checkpoint_dir).expanduser() / plain_name(dataset) / plain_name(category)
    return folder / f"{plain_name(f'{model}-{train_hash}')}.pt"
