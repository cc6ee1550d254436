"""``--pdb``: open the debugger at the user's line where export failed."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["debug_post_mortem"]


def debug_post_mortem(err: BaseException, stdin: Any = None, stdout: Any = None) -> bool:
    """Open pdb at the failing frame of the user's code (``--pdb``).

    Falls back to the innermost frame of the original exception when no user frame is known.
    Returns False when there is no traceback at all.
    """
    import pdb

    tb = getattr(err, "user_traceback", None)
    if tb is None:
        original = getattr(err, "original", None) or err.__cause__ or err
        tb = original.__traceback__
    if tb is None:
        return False
    debugger = pdb.Pdb(stdin=stdin or sys.stdin, stdout=stdout or sys.stdout)
    debugger.reset()
    debugger.interaction(None, tb)
    return True
