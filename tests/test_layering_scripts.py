"""Thin CLIs over a library: no top-level script imports another, and nothing in utils/ or models/ imports one.
slim.py is the one pipeline: it runs the scripts as its stages, and no script imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = ("train", "val", "detect", "export", "prune", "train_sparse", "finetune")
PIPELINES = ("slim",)


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` names in the file, at any depth (function-level imports too);
    `from . import x` counts as x."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update([node.module] if node.module else [a.name for a in node.names])
    return names


def script_imports(path: Path) -> list[str]:
    """The top-level scripts (or their members: `train.x`) that the file imports."""
    return sorted(m for m in imported_modules(path) if m.split(".")[0] in SCRIPTS + PIPELINES)


def test_the_scripts_exist():
    assert all((ROOT / f"{s}.py").is_file() for s in SCRIPTS + PIPELINES)


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_script_imports_another_script(script):
    assert script_imports(ROOT / f"{script}.py") == []


def test_the_pipeline_imports_scripts_only():
    """slim.py's stages are the scripts' main(argv); it imports no other pipeline."""
    assert script_imports(ROOT / "slim.py") == ["finetune", "prune", "train", "train_sparse", "val"]


def test_library_imports_no_script():
    files = sorted((ROOT / "utils").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f.relative_to(ROOT)): script_imports(f) for f in files if script_imports(f)}
    assert offenders == {}


def test_the_check_sees_every_form_of_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nimport train\nfrom val import evaluate\ndef f():\n    import prune.sub as p\n"
                 "from utils import files\n")
    assert script_imports(f) == ["prune.sub", "train", "val"]
