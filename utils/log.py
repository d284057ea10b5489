"""The 'yolo' logger shared by every script: plain messages on stdout, like upstream's printouts."""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("yolo")
if not LOGGER.handlers:
    _h = logging.StreamHandler(sys.stdout)
    _h.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_h)
    LOGGER.setLevel(logging.INFO if int(os.getenv("RANK", -1)) in (-1, 0) else logging.WARNING)
    LOGGER.propagate = False

_COLORS = {"blue": "\033[34m", "bold": "\033[1m", "red": "\033[31m", "yellow": "\033[33m", "end": "\033[0m"}


def colorstr(*args: str) -> str:
    """colorstr('blue', 'bold', 'text'): ANSI colours when stdout is a terminal, plain text otherwise."""
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    if not sys.stdout.isatty():
        return text
    return "".join(_COLORS[s] for s in styles) + text + _COLORS["end"]
