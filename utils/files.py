"""Files and paths: yaml reading, run directories (new and newest), atomic writes."""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from utils.errors import UserError


def yaml_load(path: str | Path) -> dict:
    """Load a yaml mapping; a missing file or invalid yaml is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"yaml file not found: {path}")
    try:
        with open(path, errors="ignore") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: invalid yaml{where}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a yaml mapping, got {type(d).__name__}")
    return d


def yaml_save(path: str | Path, data: dict) -> None:
    atomic_write(path, lambda f: yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True), mode="w")


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/val/exp -> runs/val/exp2, exp3, ... unless exist_ok (upstream's run directory naming)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem = re.escape(path.name)
        used = [re.fullmatch(rf"{stem}(\d*)", Path(p).name) for p in glob.glob(f"{glob.escape(str(path))}*")]
        n = max([int(m.group(1) or 1) for m in used if m] + [1]) + 1
        path = path.with_name(f"{path.name}{n}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def newest_run_file(name: str, roots: Iterable[str | Path]) -> Path | None:
    """The newest <root>/*/*/weights/<name> (by modification time) under the first root that has one; None if
    none has. How `--resume` and a bare `--weights last.pt` find the run a user means."""
    for root in dict.fromkeys(Path(r) for r in roots):
        found = list(root.glob(f"*/*/weights/{name}"))
        if found:
            return max(found, key=lambda q: q.stat().st_mtime)
    return None


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temp file in the same folder, then rename: readers never see a half-written file. The temp
    name is chosen before the file exists, so that a Ctrl-C at any point (even inside the call that creates it) finds
    it to remove."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextmanager
def staged_outputs(save_dir: str | Path) -> Iterator[Path]:
    """A hidden folder inside save_dir for a script's whole set of outputs, moved into save_dir only once every file
    is written. A run that dies (exception, Ctrl-C, SIGKILL) while writing into an existing folder (--exist-ok)
    leaves the previous set untouched, never a new yaml beside an old checkpoint. Stale folders of killed runs are
    removed by the next run."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    for old in save_dir.glob(".partial-*"):
        if not _alive(old.name.rsplit("-", 1)[-1]):
            shutil.rmtree(old, ignore_errors=True)
    stage = save_dir / f".partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        for f in sorted(stage.iterdir(), key=lambda p: p.stat().st_mtime_ns):  # in the order they were written
            os.replace(f, save_dir / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def file_size_mb(path: str | Path) -> float:
    """Size in MB of a file, or of the files in a folder (an OpenVINO IR folder)."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file()) / 1e6 if p.is_dir() else p.stat().st_size / 1e6
