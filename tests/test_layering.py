"""utils/pruning's imports run one way: graph -> groups -> importance -> selection -> surgery -> yaml_writer, then the
searches that cut sub-nets, the method objects, the driver and the report. No module imports a later stage, and
there is no import cycle. `python tests/test_layering.py` lists each module's imports of its siblings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "utils" / "pruning"
PREFIX = "utils.pruning"

# Each module's stage; a module imports only modules of earlier stages or, without a cycle, of its own.
STAGES = [
    ("graph",),  # channel flow and the groups it implies
    ("groups",),  # scores over groups: |gamma|, the global threshold, the safe percent
    ("l1", "taylor", "layer", "flops", "collapse", "unstructured"),  # importance and measures
    ("selection",),  # which channels to keep
    ("surgery",),  # cutting them
    ("yaml_writer",),  # the explicit-width yaml
    ("eagleeye", "sensitivity"),  # searches that cut and score sub-nets
    ("data",),  # what the data-driven methods learn from
    ("methods", "methods.*"),  # the method objects and their registry
    ("pruner",),  # prune_model
    ("report",),  # report.json/md: what the methods say about themselves
]
FACADE = ""  # utils/pruning/__init__.py: re-exports the first stages; in the cycle check, not in the order


def module_names() -> list[str]:
    """Every module of the package, as a dotted name under utils.pruning ("" for the package itself)."""
    out = []
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def _resolve(module: str, names: list[str], known: set[str]) -> set[str]:
    """`from module import names`: the sibling modules that names (a submodule, or the module itself)."""
    if module != PREFIX and not module.startswith(PREFIX + "."):
        return set()
    base = module.removeprefix(PREFIX).removeprefix(".")
    subs = {f"{base}.{n}".lstrip(".") for n in names} & known
    return subs if len(subs) == len(names) else subs | {base}


def sibling_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of utils.pruning that the file imports, at any depth (function-level and TYPE_CHECKING too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix(PREFIX).removeprefix(".") for a in node.names
                    if a.name == PREFIX or a.name.startswith(PREFIX + ".")} & known
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import; utils.pruning uses absolute imports")
            out |= _resolve(node.module, [a.name for a in node.names], known)
    return out


def import_graph() -> dict[str, set[str]]:
    known = set(module_names())
    graph = {}
    for name in known:
        f = PKG.joinpath(*name.split(".")) if name else PKG
        f = f / "__init__.py" if f.is_dir() else f.with_suffix(".py")
        graph[name] = sibling_imports(f, known) - {name}
    return graph


def stage(name: str) -> int:
    for k, members in enumerate(STAGES):
        if name in members or any(m.endswith(".*") and name.startswith(m[:-1]) for m in members):
            return k
    raise KeyError(name)


def test_every_module_has_a_stage():
    unplaced = []
    for name in module_names():
        try:
            stage(name) if name != FACADE else None
        except KeyError:
            unplaced.append(name)
    assert unplaced == [], "add new modules of utils/pruning to STAGES"


def test_no_module_imports_a_later_stage():
    late = {f"{a} -> {b}": (stage(a), stage(b)) for a, deps in import_graph().items() if a != FACADE
            for b in deps if b != FACADE and stage(b) > stage(a)}
    assert late == {}


def test_no_module_imports_the_package_facade():
    assert [a for a, deps in import_graph().items() if FACADE in deps] == []


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(m):], m]))
            if m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_the_known_imports_are_seen(tmp_path):
    """Every form of import is found, and the checks catch a late import and a cycle in a made-up graph."""
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom utils.pruning.graph import build_groups\nfrom utils.pruning import sensitivity\n"
                 "def f():\n    from utils.pruning.methods import METHODS\nfrom typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    import utils.pruning.surgery\n")
    known = {"graph", "sensitivity", "methods", "surgery", ""}
    assert sibling_imports(f, known) == {"graph", "sensitivity", "methods", "surgery"}
    assert import_graph()["groups"] == {"graph"} and "groups" not in import_graph()["graph"]
    assert import_graph()["sensitivity"] >= {"selection", "surgery"} and "methods" not in import_graph()["sensitivity"]


if __name__ == "__main__":  # the table the tests check
    for name, deps in sorted(import_graph().items(), key=lambda x: (stage(x[0]) if x[0] else -1, x[0])):
        print(f"{stage(name) if name else '-':>2} {name or '(__init__)':<24} {', '.join(sorted(deps))}")
