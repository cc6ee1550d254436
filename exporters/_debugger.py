"""``--pdb``: open the debugger at the user's line where export failed, with real values.

torch.export runs the model on fake tensors (``torch.Size([s95, 4])``), which is not what a user
debugging in eager mode expects. So when the failing line is known and the model can be re-run,
the model runs again eagerly on the example inputs with a breakpoint at that line: pdb stops there
with the real tensors. Otherwise pdb opens post mortem at the innermost user frame.
"""

from __future__ import annotations

import pdb
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["debug_post_mortem"]


class _EagerPdb(pdb.Pdb):
    stopped = False

    def interaction(self, frame: Any, traceback: Any) -> None:
        self.stopped = True
        super().interaction(frame, traceback)


def _stop_in_eager_run(location: Any, rerun: Callable[[], Any], stdin: Any, stdout: Any) -> bool:
    debugger = _EagerPdb(stdin=stdin, stdout=stdout)
    debugger.reset()
    if debugger.set_break(location.filename, location.lineno):  # an error string: no such line
        return False
    debugger.message(f"re-running the model eagerly on the example inputs; stopping at {location}")
    debugger.botframe = sys._getframe()
    debugger.set_continue()  # run until the breakpoint, not from the first line
    sys.settrace(debugger.trace_dispatch)
    try:
        rerun()
    except Exception:  # noqa: BLE001 - the eager run may fail past the line; the export error follows
        pass
    finally:
        sys.settrace(None)
    return debugger.stopped


def debug_post_mortem(
    err: BaseException, stdin: Any = None, stdout: Any = None, rerun: Callable[[], Any] | None = None
) -> bool:
    """Open pdb at the failing line of the user's code (``--pdb``).

    Args:
        err: the export error (its ``failure.location`` is the user's line).
        rerun: runs the model eagerly on its example inputs; pdb then stops at that line with real
            values. Without it (or when the run never reaches the line) pdb opens post mortem at the
            innermost user frame, else at the innermost frame of the original exception.

    Returns:
        False when there was nowhere to stop.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    location = getattr(getattr(err, "failure", None), "location", None)
    if rerun is not None and location is not None and _stop_in_eager_run(location, rerun, stdin, stdout):
        return True
    tb = getattr(err, "user_traceback", None)
    if tb is None:
        original = getattr(err, "original", None) or err.__cause__ or err
        tb = original.__traceback__
    if tb is None:
        return False
    debugger = pdb.Pdb(stdin=stdin, stdout=stdout)
    debugger.reset()
    debugger.interaction(None, tb)
    return True
