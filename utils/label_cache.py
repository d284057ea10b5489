"""Label cache: a dataset's verified labels saved beside its labels folder (labels/train.cache for labels/train/)
and reused while no image or label file has changed, so a second run skips the scan.

The file is a plain .npz (numbers and strings only; loaded with allow_pickle=False), keyed by a hash of every image
and label path with its size and modification time, the class count and the cache format version.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from itertools import chain
from pathlib import Path
from typing import Any, Callable

import numpy as np

from utils.files import atomic_write
from utils.labels import ImageLabels, img2label_paths, verify_dataset
from utils.log import LOGGER

CACHE_VERSION = 2  # bump when the verification rules or the file layout change


def cache_file(im_files: list[str]) -> Path:
    """Where the cache of these images lives: beside their (first) labels folder, as upstream."""
    return Path(img2label_paths(im_files[:1])[0]).parent.with_suffix(".cache")


def files_hash(im_files: list[str], lb_files: list[str], nc: int | None) -> str:
    """Changes when any file is added, removed, resized or touched, or when nc changes (it decides what is valid)."""
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}\n".encode())
    for f in chain(im_files, lb_files):
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a missing label file is part of the state too
            h.update(f"{f}\0-\n".encode())
    return h.hexdigest()


def folder_writable(folder: str | Path) -> bool:
    """Writable, and not marked read-only: a folder without write bits is left alone even by root."""
    try:
        return os.access(folder, os.W_OK) and bool(stat.S_IMODE(os.stat(folder).st_mode) & 0o222)
    except OSError:
        return False


def atomic_write_readable(path: str | Path, write: Callable[[Any], None]) -> None:
    """atomic_write, then the usual umask permissions instead of the temp file's 0600: caches in a dataset folder
    must stay readable by everyone who can read the data."""
    atomic_write(path, write)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save(path: Path, key: str, good: list[ImageLabels], warnings: list[str]) -> None:
    arrays = {
        "hash": np.array(key),
        "im_files": np.array([g.im_file for g in good], dtype=str),
        "shapes": np.array([g.shape for g in good], dtype=np.int64).reshape(-1, 2),
        "counts": np.array([len(g.labels) for g in good], dtype=np.int64),
        "labels": np.concatenate([g.labels for g in good] + [np.zeros((0, 5), np.float32)]).astype(np.float32),
        "status": np.array([g.status for g in good], dtype=str),
        "warnings": np.array(warnings, dtype=str),
    }
    atomic_write_readable(path, lambda f: np.savez(f, **arrays))


def _load(path: Path, key: str) -> tuple[list[ImageLabels], list[str]] | None:
    """The cached result, or None when the file is stale, from another version or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as d:
            if str(d["hash"]) != key:
                return None
            ends = np.cumsum(d["counts"])
            labels = np.split(d["labels"], ends[:-1]) if len(ends) else []
            good = [ImageLabels(str(f), (int(s[0]), int(s[1])), lb, str(st))
                    for f, s, lb, st in zip(d["im_files"], d["shapes"], labels, d["status"])]
            return good, [str(w) for w in d["warnings"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def verify_dataset_cached(im_files: list[str], nc: int | None, workers: int = 8,
                          prefix: str = "") -> tuple[list[ImageLabels], list[str]]:
    """verify_dataset, answered from the cache file when it matches the files on disk; otherwise scan and save it.

    An unwritable folder only costs a warning: the scan result is used without being cached.
    """
    lb_files = img2label_paths(im_files)
    path = cache_file(im_files)
    key = files_hash(im_files, lb_files, nc)
    cached = _load(path, key) if path.is_file() else None
    if cached is not None:
        LOGGER.info(f"{prefix}Scanning {path}... cache found: {len(cached[0])} images")
        return cached
    good, warnings = verify_dataset(im_files, nc, workers)
    if not path.parent.is_dir():  # no labels folder at all: do not create one just for the cache
        return good, warnings
    if not folder_writable(path.parent):
        LOGGER.warning(f"{prefix}WARNING: {path.parent} is read-only, labels not cached")
        return good, warnings
    try:
        _save(path, key, good, warnings)
        LOGGER.info(f"{prefix}New cache created: {path}")
    except OSError as e:
        LOGGER.warning(f"{prefix}WARNING: cannot write label cache {path} ({e.strerror or e}), not cached")
    return good, warnings
