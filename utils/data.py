"""Dataset yamls: `path` (root), `train`/`val`/`test` (folders, list files or globs, relative to `path`),
`names` (list or {index: name}) and/or `nc`. A relative `path` is taken from the repo root, as upstream does.
A `generate` section (data/synthetic.yaml) says the dataset is drawn by utils/synthetic.py on first use."""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError
from utils.files import yaml_load
from utils.synthetic import ensure_generated

ROOT = Path(__file__).resolve().parents[1]


def _names(d: dict, source: str) -> dict[int, str]:
    names, nc = d.get("names"), d.get("nc")
    if names is None:
        if not isinstance(nc, int) or nc < 1:
            raise UserError(f"{source}: needs 'names' (a list or a dict) or a positive integer 'nc'")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, list):
        names = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            names = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise UserError(f"{source}: 'names' keys must be class indices 0..nc-1") from None
        if sorted(names) != list(range(len(names))):
            raise UserError(f"{source}: 'names' keys must be the class indices 0..{len(names) - 1}")
    else:
        raise UserError(f"{source}: 'names' must be a list or a dict, got {type(names).__name__}")
    if nc is not None and nc != len(names):
        raise UserError(f"{source}: nc is {nc} but {len(names)} names are given")
    return {k: str(v) for k, v in sorted(names.items())}


def check_dataset(data: str | Path | dict, splits: tuple[str, ...] = ("val",)) -> dict:
    """Load and check a data yaml; return it with absolute split paths, `names` as a dict and `nc`.

    `splits` must exist on disk (e.g. ("train", "val") for training); a missing one is a UserError that says where
    it was looked for (this repo never downloads during a run; a yaml with `generate` is drawn locally first).
    """
    source = str(data) if not isinstance(data, dict) else "data dict"
    d = dict(data) if isinstance(data, dict) else yaml_load(data)
    d["names"] = _names(d, source)
    d["nc"] = len(d["names"])
    root = Path(d.get("path") or "")
    if not root.is_absolute():
        root = (ROOT / root).resolve()
    d["path"] = str(root)
    if "generate" in d:  # built-in dataset: draw it now unless a finished copy with the same settings exists
        ensure_generated(root, d["generate"], d["names"], source)
    for k in ("train", "val", "test"):
        v = d.get(k)
        if v:
            d[k] = [str(root / x) for x in v] if isinstance(v, list) else str(root / v)
    for k in splits:
        v = d.get(k)
        if not v:
            raise UserError(f"{source}: no '{k}' split given")
        missing = [p for p in (v if isinstance(v, list) else [v]) if "*" not in p and not Path(p).exists()]
        if missing:
            hint = " (its 'download' entry says where to get it)" if d.get("download") else ""
            raise UserError(f"{source}: {k} images not found: {missing[0]}{hint}")
    return d
