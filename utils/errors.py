"""User-facing errors: one clear line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad path, bad yaml, bad flag). Scripts print it as one line and exit 1."""


def cli(main: Callable) -> Callable:
    """Wrap a script's main(): a UserError or Ctrl-C ends the process with one line on stderr."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            sys.exit(1)
        except (KeyboardInterrupt, Exception) as e:  # Ctrl-C inside torch.save surfaces as its cleanup's RuntimeError
            if not _caused_by_ctrl_c(e):
                raise
            print("Interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def _caused_by_ctrl_c(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
