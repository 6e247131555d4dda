"""The package boundary (docs/design.md, "The two packages"): `models` holds the networks and
the loader and imports nothing of the pipeline or its heavy libraries; `pipeline` imports
`models`, never the other way; modules do not reach into each other's private names; and
the refactoring kept the cache keys, so the committed results are reused, not retrained."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.job import JobSpec
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "seaborn", "sklearn", "tqdm", "pipeline")


@pytest.mark.slow  # fresh Python processes, to see what an import loads
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


def _sources(*folders: str) -> list[Path]:
    """Every .py file under ``folders`` of the repository, subpackages (models/mvtec/) included."""
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_the_sources_include_the_subpackages():
    assert "models/mvtec/dataset.py" in {_name(p) for p in _sources("models")}


@pytest.mark.parametrize("path", _sources("models"), ids=_name)
def test_models_never_imports_pipeline(path):
    bad = [m for m, level, _ in _imports(path) if level == 0 and m.split(".")[0] == "pipeline"]
    assert not bad, f"{_name(path)} imports {bad}: imports go one way, pipeline -> models"


@pytest.mark.parametrize("path", _sources("models", "pipeline", "bench"), ids=_name)
def test_no_module_uses_another_modules_private_names(path):
    """Neither ``from x import _name`` nor ``module._name`` on an imported module (tests may)."""
    imports = _imports(path)
    private = [f"{m}.{name}" for m, _, name in imports if name.startswith("_") and not name.startswith("__")]
    bound = {(name or m).split(".")[0] for m, _, name in imports}  # names the imports bind (aliases aside)
    private += [f"{node.value.id}.{node.attr}" for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not private, f"{_name(path)} uses private names {private}: give what is shared a public name"


def test_default_jobs_keep_the_keys_of_the_committed_demo_rows():
    """The committed CSV holds the notebook's default run on the demo dataset: the default jobs
    of today's code, on data of the committed rows' fingerprints, must have exactly those keys,
    so a rerun on the same demo files reuses every row (trains nothing). The demo's files are
    not in the repository, so their fingerprint is taken from the rows (no test checks it
    against freshly written demo files: the generator's output depends on the CPU's numpy
    kernels, bench/README.md "Demo run time")."""
    committed = pd.read_csv(REPO / "evaluation_results_all_models.csv", dtype=str, keep_default_na=False)
    demo = committed[committed["dataset"] == "demo"]
    fingerprints = dict(zip(demo["category"], demo["data_fingerprint"]))
    assert len(fingerprints) == demo["category"].nunique()  # one fingerprint per category
    keys = {JobSpec(data_root="data/demo", dataset="demo", category=c, model=m, data_fingerprint=fingerprints[c],
                    train=TrainConfig(seed=int(seed))).key()
            for c in demo["category"].unique() for m in demo["model"].unique() for seed in demo["seed"].unique()}
    assert len(demo) == len(keys)
    assert keys == set(demo[["dataset", "category", "model", "config_hash"]].itertuples(index=False, name=None))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_graph() -> dict[str, set[str]]:
    """Module -> the modules of `models` and `pipeline` it imports (anywhere in it)."""
    paths = {_module_name(p): p for package in ("models", "pipeline") for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for module, level, alias in _imports(path):
            base = ".".join(package.split(".")[: len(package.split(".")) - level + 1]) if level else ""
            target = ".".join(x for x in (base, module) if x)
            if module and target in paths:
                deps.add(target)
            if f"{target}.{alias}" in paths:  # `from . import runs`: the module runs
                deps.add(f"{target}.{alias}")
        graph[name] = deps - {name}
    return graph


def test_the_house_reads_top_down_no_import_cycles():
    """Every module can be read after the ones it imports: the import graph of the two packages
    has no cycle (none at module level, none hidden in a function)."""
    graph, done, path = _package_graph(), set(), []

    def visit(name: str) -> None:
        if name in path:
            pytest.fail(f"import cycle: {' -> '.join(path[path.index(name):] + [name])}")
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert "pipeline.job" in graph["pipeline.grid"] and "pipeline.grid" not in graph["pipeline.job"]


def test_the_design_module_tables_list_exactly_the_files():
    """docs/design.md's module tables name every module of the two packages, and no other."""
    text = (REPO / "docs" / "design.md").read_text()
    named = set()
    for package in ("models", "pipeline"):
        section = text.split(f"**`{package}/`**", 1)[1].split("\n\n", 2)[1]  # the table after the heading line
        for line in section.splitlines():
            cell = line.split("|")[1] if line.startswith("|") else ""
            named |= {f"{package}/{name}" for name in re.findall(r"`([\w/]+\.py)`", cell)}
    files = {p.relative_to(REPO).as_posix() for package in ("models", "pipeline")
             for p in (REPO / package).rglob("*.py")}
    assert named == files, f"in the tables, not on disk: {sorted(named - files)}; on disk only: {sorted(files - named)}"
