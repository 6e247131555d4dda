"""The notebook, executed top to bottom by a real kernel, on a tiny generated demo dataset.

Parameters go in through the environment variables its parameters cell reads (AD_*); no
data root is named and the kernel runs in tmp_path, where ./mvtec_anomaly_detection is absent,
so the notebook takes its "no dataset: use the demo" path and writes a tiny demo (32 px, a
few images per category) into tmp_path. Every output (CSV, checkpoints, figures) goes to
tmp_path, never into the repository.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from helpers import make_specs, make_tiny_mvtec
from models import MODEL_NAMES
from models.errors import ConfigError
from pipeline import demo_data, report

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "evaluate_all_models.ipynb"

# Tiny models: enough to exercise every code path in seconds, not to detect anything.
TINY_MODELS = {
    "cae": {"widths": [8, 16], "latent_dim": 16},
    "vae": {"widths": [8, 16], "latent_dim": 16},
    "vit_vae": {"patch_size": 8, "dim": 32, "depth": 1, "decoder_depth": 1, "heads": 2},
    "vae_grf": {"widths": [8, 16], "latent_channels": 4},
}
CATEGORIES = ["weave", "hexnut"]  # one texture, one object of the demo dataset


def test_parameters_cell_is_tagged_and_first_code_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("DATA_ROOT", "CATEGORIES", "MODELS", "EPOCHS", "IMAGE_SIZE", "SEEDS", "SCORE", "EVAL_SIZE",
                 "THRESHOLD_RULE", "RESULTS_CSV", "DEVICE"):
        assert f"{name} = env(" in code[0].source, name


def test_the_known_parameter_names_are_the_cells():
    """warn_unknown_env's list is exactly the AD_* names the parameters cell reads."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code").source
    assert sorted(re.findall(r'env\("(AD_\w+)"', cell)) == sorted(report.NOTEBOOK_ENV)
    assert "warn_unknown_env()" in cell


# Issue 20, item 18: parameters from the environment, each bad value one sentence naming its variable.

@pytest.mark.parametrize("name, value, kw, message", [
    ("AD_MODEL_OVERRIDES", '{"cae": 5}', dict(keys=MODEL_NAMES, values=dict),
     "environment variable AD_MODEL_OVERRIDES='{\"cae\": 5}' gives 'cae' the value 5, but each value must be a JSON "
     "object (e.g. {\"cae\": {\"setting\": \"value\"}}); unset it or fix its value."),
    ("AD_MODEL_OVERRIDES", '{"cea": {}}', dict(keys=MODEL_NAMES, values=dict),
     "environment variable AD_MODEL_OVERRIDES='{\"cea\": {}}' has the unknown key 'cea'; valid keys: cae, vae, "
     "vit_vae, vae_grf; unset it or fix its value."),
    ("AD_DEMO_OPTIONS", '{"n_trian": 8}', dict(keys=demo_data.DEMO_OPTION_NAMES),
     "environment variable AD_DEMO_OPTIONS='{\"n_trian\": 8}' has the unknown key 'n_trian'; valid keys: seed, "
     "image_size, n_train, n_test_good, n_per_defect, categories, workers; unset it or fix its value."),
    ("AD_DEMO_OPTIONS", "[8]", dict(keys=demo_data.DEMO_OPTION_NAMES), "is not a JSON object"),
    ("AD_DEMO_OPTIONS", "{n_train: 8}", dict(keys=demo_data.DEMO_OPTION_NAMES), "is not a JSON object"),
    ("AD_CATEGORIES", '["bottle", 1.5]', {}, "is not a JSON list of names"),
])
def test_a_bad_dict_or_list_parameter_is_one_sentence_naming_its_variable(monkeypatch, name, value, kw, message):
    monkeypatch.setenv(name, value)
    default = None if name == "AD_CATEGORIES" else {}
    with pytest.raises(ConfigError) as err:
        report.env(name, default, **kw)
    assert message in str(err.value) and str(err.value).startswith(f"environment variable {name}=")


def test_a_model_override_that_is_not_a_dict_is_a_config_error_from_python_too(tmp_path):
    root = make_tiny_mvtec(tmp_path, categories=("widget",))
    with pytest.raises(ConfigError, match=r"the overrides of cae must be a dict of its settings .* got 5\."):
        make_specs(root, ["widget"], ["cae"], model_overrides={"cae": 5})
    with pytest.raises(ConfigError, match=r"unknown demo option 'n_trian' \(DEMO_OPTIONS\); valid: seed, "):
        demo_data.find_or_make_dataset("", tmp_path / "demo", n_trian=8)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("value, expected", [
    ("all", None), ("none", None), ("", None),  # alone: every category
    ('["all"]', ["all"]), ('["none", "bottle"]', ["none", "bottle"]),  # a category of that name
    ('["a, b"]', ["a, b"]), ("bottle, screw", ["bottle", "screw"]),
])
def test_categories_named_all_or_none_can_be_selected(monkeypatch, value, expected):
    monkeypatch.setenv("AD_CATEGORIES", value)
    assert report.env("AD_CATEGORIES", None) == expected
    monkeypatch.setenv("AD_SEEDS", "[0, 2]")
    assert report.env("AD_SEEDS", [0, 1]) == [0, 2]


def test_misspelt_ad_variables_are_named_with_the_known_ones(monkeypatch):
    monkeypatch.setenv("AD_EPOCH", "3")
    monkeypatch.setenv("AD_COLOUR", "red")
    monkeypatch.setenv("AD_EPOCHS", "3")  # known: not named
    with pytest.warns(UserWarning) as caught:
        report.warn_unknown_env()
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("ignored the environment variables AD_COLOUR, AD_EPOCH (did you mean AD_EPOCHS?): "
                              "the notebook reads only AD_DATA_ROOT, AD_CATEGORIES, ")
    monkeypatch.delenv("AD_EPOCH")
    monkeypatch.delenv("AD_COLOUR")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.warn_unknown_env()  # nothing unknown: no warning


@pytest.mark.slow  # a real kernel executes the notebook
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "out"
    env = {
        "AD_DATA_ROOT": "",  # not named: the default folder, absent in the kernel's folder (tmp_path), so the demo
        "AD_DEMO_DIR": str(tmp_path / "demo"),
        "AD_DEMO_OPTIONS": json.dumps({"image_size": 32, "n_train": 8, "n_test_good": 3, "n_per_defect": 1,
                                       "categories": CATEGORIES}),
        "AD_CATEGORIES": ",".join(CATEGORIES),
        "AD_MODELS": "cae,vae,vit_vae,vae_grf",
        "AD_EPOCHS": "1",
        "AD_MIN_STEPS": "2",  # the step budget's path: 7 training images at batch 8 take 2 epochs
        "AD_IMAGE_SIZE": "32",
        "AD_BATCH_SIZE": "8",
        "AD_SEEDS": "0,1",
        "AD_DEVICE": "cpu",
        "AD_MODEL_OVERRIDES": json.dumps(TINY_MODELS),
        "AD_RESULTS_CSV": str(out / "results.csv"),
        "AD_CHECKPOINT_DIR": str(out / "checkpoints"),
        "AD_RESULTS_DIR": str(out / "results"),
        "AD_IMAGES_DIR": str(out / "images"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "MPLBACKEND": "Agg",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the kernel is a child process and inherits them
    monkeypatch.delenv("MVTEC_ROOT", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "No dataset found" in text  # the one sentence of the demo fallback

    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(CATEGORIES) * len(TINY_MODELS) * 2  # two seeds
    assert sorted(df["seed"].unique()) == [0, 1] and (df["eval_size"].astype(str) == "256").all()
    assert set(df["dataset"]) == {"demo"}
    assert set(df["model"]) == set(TINY_MODELS) and set(df["category"]) == set(CATEGORIES)
    for col in ("image_auroc", "pixel_auroc", "aupro", "f1"):
        assert df[col].between(0, 1).all(), col
    assert (df["steps"] == 2).all()  # AD_MIN_STEPS reached the training

    # The predict cell: a few test images of the first row's job, scored and drawn.
    predictions = pd.read_csv(out / "results" / "predictions" / "predictions.csv")
    assert 1 <= len(predictions) <= 6 and set(predictions["verdict"]) <= {"good", "defective"}
    assert all((out / "results" / "predictions" / name).is_file() for name in predictions["heatmap"])

    figures = [out / "results" / name for name in
               ("f1_score_comparison.png", "roc_auc_comparison.png", "roc_auc_heatmap.png", "metrics_distribution.png",
                "training_curves.png")]
    figures += [out / "results" / f"gallery_{c}.png" for c in CATEGORIES]
    figures += [out / "images" / "grf.png", out / "images" / "vae-vae-grf.png"]
    for f in figures:
        assert f.is_file() and f.stat().st_size > 10_000, f

    # The summary is computed (a Markdown table), and no cell raised.
    md = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if "text/markdown" in o.get("data", {})]
    assert md and "Wins per model" in md[-1]
    assert "Differences between models" in md[-1] and "2 seeds" in md[-1]  # the bootstrap verdicts
    assert "mean ± sd over 2 seeds" in text
