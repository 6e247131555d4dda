"""The package boundary (docs/design.md, "The two packages"): `models` holds the networks and
the loader and imports nothing of the pipeline or its heavy libraries; `pipeline` imports
`models`, never the other way; modules do not reach into each other's private names; and
the refactoring kept the cache keys, so the committed results are reused, not retrained."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.job import JobSpec
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "seaborn", "sklearn", "tqdm", "pipeline")


def test_import_models_loads_no_pipeline_and_no_heavy_library():
    """Measured against what torch, numpy and PIL load themselves (torch.hub imports tqdm)."""
    code = ("import sys; import torch, numpy, PIL.Image; before = set(sys.modules); "
            "import models, models.grf, models.mvtec, models.scoring; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    code = f"import sys, models; print(sorted(m for m in {HEAVY[:4]!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr  # not even through torch


def _imports(path: Path) -> list[tuple[str, int, str]]:
    """(module imported, level, names) of every import statement of a file (anywhere in it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.module or "", node.level, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_never_imports_pipeline(path):
    bad = [m for m, level, _ in _imports(path) if level == 0 and m.split(".")[0] == "pipeline"]
    assert not bad, f"{path.name} imports {bad}: imports go one way, pipeline -> models"


@pytest.mark.parametrize("path", sorted([*(REPO / "models").glob("*.py"), *(REPO / "pipeline").glob("*.py"),
                                         *(REPO / "bench").glob("*.py")]), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_uses_another_modules_private_names(path):
    """Neither ``from x import _name`` nor ``module._name`` on an imported module (tests may)."""
    imports = _imports(path)
    private = [f"{m}.{name}" for m, _, name in imports if name.startswith("_") and not name.startswith("__")]
    bound = {(name or m).split(".")[0] for m, _, name in imports}  # names the imports bind (aliases aside)
    private += [f"{node.value.id}.{node.attr}" for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not private, f"{path.name} uses private names {private}: give what is shared a public name"


def test_default_jobs_keep_the_keys_of_the_committed_demo_rows():
    """The committed CSV holds the notebook's default run on the demo dataset: the default jobs
    of today's code, on data of the committed rows' fingerprints, must have exactly those keys,
    so a rerun on the same demo files reuses every row (trains nothing). The demo's files are
    not in the repository, so their fingerprint is taken from the rows (it is checked against
    the files in tests/test_trust.py)."""
    committed = pd.read_csv(REPO / "evaluation_results_all_models.csv", dtype=str, keep_default_na=False)
    demo = committed[committed["dataset"] == "demo"]
    fingerprints = dict(zip(demo["category"], demo["data_fingerprint"]))
    assert len(fingerprints) == demo["category"].nunique()  # one fingerprint per category
    keys = {JobSpec(data_root="data/demo", dataset="demo", category=c, model=m, data_fingerprint=fingerprints[c],
                    train=TrainConfig(seed=int(seed))).key()
            for c in demo["category"].unique() for m in demo["model"].unique() for seed in demo["seed"].unique()}
    assert len(demo) == len(keys)
    assert keys == set(demo[["dataset", "category", "model", "config_hash"]].itertuples(index=False, name=None))
