"""``export`` (pipeline/export.py): every registered model as ONNX, its maps within 1e-4 of PyTorch
under onnxruntime (or named as not exportable, with the operator), its metadata, the README's
plain-onnxruntime example, and one sentence for what cannot be exported."""
from __future__ import annotations

import ast
import dataclasses
import json
import re

import numpy as np
import onnxruntime
import pytest
import torch

import models
from helpers import REPO, TINY, one_error_line
from models import AnomalyModel, ModelConfig
from models.scoring import ScoreConfig
from pipeline import export, image_files, predict, trained
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig


@pytest.fixture(scope="module")
def jobs(grid_of_four):
    """A trained tiny job per registered model: the grid's, or (a model the grid lacks) a fresh one
    in the CAE's row, so that every model of the registry is exported."""
    _, csv_path, _, tmp = grid_of_four
    found = {name: trained.load_trained(csv_path, category="widget", model=name, checkpoint_dir=tmp / "ck")
             for name in TINY}
    for name in models.MODEL_NAMES:
        if name not in found:
            fresh = models.build_model(name, image_size=32).eval()
            found[name] = dataclasses.replace(found["cae"], model=fresh, name=name)
    return found


@pytest.fixture(scope="module")
def exported(jobs, tmp_path_factory):
    """{model: the ONNX file, or the ExportError that says why it cannot be written}."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, job in jobs.items():
        try:
            out[name] = export.export_onnx(job, folder / f"{name}.onnx")
        except export.ExportError as e:
            out[name] = e
    return out


def decoded_test_images(grid_of_four) -> list[np.ndarray]:
    """The job's test images, as the training read them."""
    root = grid_of_four[0]
    return [predict.decode_for_prediction(p, 32, 3).pixels for p in image_files.find_images([root / "widget" / "test"])]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_exports_and_onnxruntime_gives_pytorchs_maps(name, jobs, exported, grid_of_four):
    result, job = exported[name], jobs[name]
    if isinstance(result, export.ExportError):  # allowed only with the operator named, in one sentence
        assert re.search(r"has no ONNX operator for \S+", str(result)) and "\n" not in str(result), result
        pytest.skip(f"{name} is not exportable: {result}")
    assert result.verification.max_map_diff <= export.MAX_MAP_DIFF and result.path.stat().st_size == result.size_bytes
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == ["map", "score"]
    pixels = np.stack(decoded_test_images(grid_of_four))  # (6, 3, 32, 32) uint8: real images, not noise
    x = pixels.astype(np.float32) / 255
    maps, scores = session.run(None, {"image": x})
    with torch.inference_mode():
        want_maps = job.model.anomaly_map(torch.from_numpy(x), job.eval_config.score).numpy()
        want = job.model.anomaly_score(torch.from_numpy(x), job.eval_config.score).numpy()
    assert maps.shape == (6, 32, 32) and scores.shape == (6,)
    assert np.abs(maps - want_maps).max() <= 1e-4 and np.abs(scores - want).max() <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["threshold"]) == job.threshold and meta["scoring_rule"] == job.eval_config.score.name
    assert (meta["input_height"], meta["input_width"], meta["channels"], meta["channel_order"]) == ("32", "32", "3",
                                                                                                   "RGB")
    assert (meta["model"], meta["category"], meta["config_hash"], meta["train_hash"]) == (
        name, "widget", job.config_hash, job.train_hash)
    assert meta["package"] == "recon-anomaly" and meta["package_version"] and meta["layout"] == "NCHW"
    assert ScoreConfig(**json.loads(meta["scoring_config"])) == job.eval_config.score


def test_the_readme_example_needs_only_numpy_pil_and_onnxruntime_and_gives_predicts_scores(
        exported, jobs, grid_of_four, tmp_path):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?def onnx_predict\(.*?)```", text, re.S).group(1)
    imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Import)
                for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, ast.ImportFrom)}
    assert imported == {"numpy", "onnxruntime", "PIL"}
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    root = grid_of_four[0]
    images = image_files.find_images([root / "widget" / "test"])
    scores, maps, verdicts = namespace["onnx_predict"](exported["cae"].path, images)
    run = predict.predict_images(jobs["cae"], images, tmp_path, write_heatmaps=False, progress=False)
    np.testing.assert_allclose(scores, [p.score for p in run.predictions], atol=1e-6)
    assert maps.shape == (len(images), 32, 32)
    assert verdicts == [p.verdict for p in run.predictions]


@pytest.mark.parametrize("score_map", ["ssim", "msgms", "l2msgms"])
def test_every_scoring_rule_exports_and_matches_pytorch(jobs, tmp_path, score_map):
    job = dataclasses.replace(jobs["cae"], eval_config=EvalConfig(score=ScoreConfig(score_map=score_map)))
    done = export.export_onnx(job, tmp_path / "m.onnx")
    assert done.verification.max_map_diff <= export.MAX_MAP_DIFF and (tmp_path / "m.onnx").exists()


class NextAfter(AnomalyModel):
    """A model whose reconstruction uses an operator ONNX has no counterpart for (torch.nextafter)."""

    def __init__(self):
        super().__init__(ModelConfig(image_size=16))

    def reconstruct(self, x):
        return torch.nextafter(x, torch.ones_like(x))


def test_a_model_with_an_operator_onnx_lacks_is_one_sentence_naming_it(jobs, tmp_path):
    job = dataclasses.replace(jobs["cae"], model=NextAfter().eval(), name="nextafter")
    with pytest.raises(export.ExportError) as info:
        export.export_onnx(job, tmp_path / "m.onnx")
    msg = str(info.value)
    assert "cannot export nextafter on 'widget'" in msg and "has no ONNX operator for prims.nextafter" in msg
    assert "\n" not in msg and not (tmp_path / "m.onnx").exists()


def test_a_graph_that_does_not_compute_the_models_maps_is_not_written(jobs, exported):
    onnx_bytes = exported["cae"].path.read_bytes()
    with pytest.raises(export.ExportError, match=r"computes maps up to .* away from PyTorch's"):
        export.verify(onnx_bytes, jobs["vae"])  # the CAE's graph against the VAE's maps


def test_the_command_line_writes_the_file_or_says_why_not(grid_of_four, tmp_path, capsys):
    _, csv_path, _, tmp = grid_of_four
    base = ["export", "--results-csv", str(csv_path), "--category", "widget", "--model", "vae_grf",
            "--checkpoint-dir", str(tmp / "ck")]
    assert main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder; name the ONNX file to write" in one_error_line(capsys.readouterr().err)
    (tmp_path / "file").write_text("in the way")
    assert main([*base, "--out", str(tmp_path / "file" / "m.onnx")]) == 2
    assert "cannot create the folder of the ONNX file" in one_error_line(capsys.readouterr().err)
    assert main([*base, "--out", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {tmp_path / 'm.onnx'} (vae_grf on 'widget'") and "max |map diff|" in printed
    assert onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map["model"] == (
        "vae_grf")
