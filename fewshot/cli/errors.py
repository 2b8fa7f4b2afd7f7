"""The one table from the library's errors to a command's exit code and message, shared by every command line.

- 2: bad input (a value, a file that is missing or not what was expected, a run folder in the wrong state), a run
  that diverged, an optional dependency that is not installed, or a write the operating system refused. One line
  `error: ...` on stderr, no traceback: the message names the value and what was expected.
- 1: another process of a torchrun job stopped, so this one could not go on (torchrun may restart the job).
- 128 + N: a run stopped by signal N (SIGINT, SIGTERM) after saving its state, the shell's code for the signal;
  130 for Ctrl-C before a run started.

Anything else is a bug and keeps its traceback. Each command's `main` reads:

    try:
        ...
    except COMMAND_ERRORS as error:
        return report_error(error)
"""

from __future__ import annotations

import sys

from fewshot.cli.plugins import FLAG as PLUGIN_FLAG
from fewshot.registry import UnknownName
from fewshot.runtime import RankFailure
from fewshot.training import NonFiniteLoss, OutputError, RunInUse, TrainingInterrupted

#: Exit code of bad input, of a run that cannot go on as asked, and of a refused write.
BAD_INPUT = 2
#: Exit code of a process whose peer in a torchrun job stopped.
PEER_FAILED = 1
#: Exit code of Ctrl-C (128 + SIGINT), before anything was saved.
INTERRUPTED = 130

#: (error types, exit code); the first row that matches an error decides.
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((RankFailure,), PEER_FAILED),
    ((ValueError, TypeError, FileNotFoundError, FileExistsError, NonFiniteLoss, OutputError, RunInUse, ImportError),
     BAD_INPUT),
    ((OSError,), BAD_INPUT),  # a read-only folder or a full disk
)

#: Every error type of the table, for a command's `except COMMAND_ERRORS as error:`.
COMMAND_ERRORS: tuple[type[BaseException], ...] = tuple(kind for kinds, _ in EXIT_CODES for kind in kinds)


def exit_code_for(error: BaseException) -> int:
    """The exit code of `error` by the table; a ValueError for an error the table does not hold (a bug)."""
    for kinds, code in EXIT_CODES:
        if isinstance(error, kinds):
            return code
    raise ValueError(f"{type(error).__name__} has no exit code; expected one of "
                     f"{', '.join(kind.__name__ for kind in COMMAND_ERRORS)}")


def unknown_name(error: BaseException) -> UnknownName | None:
    """The UnknownName behind `error` (itself, or the error it was raised from), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UnknownName):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_message(error: BaseException) -> str:
    """The one line a command prints for `error`; an unknown registered name says how to bring in a plug-in."""
    unknown = unknown_name(error)
    if unknown is not None:
        return (f"error: {str(error).rstrip('.')}. If {unknown.name!r} is a plug-in {unknown.kind}, pass {PLUGIN_FLAG} "
                "MODULE: the module (or .py file) that registers it (docs/extending.md)")
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, FileExistsError)) and error.strerror:
        # The operating system's own error: its wording and the path, not "[Errno 13] ...".
        where = getattr(error, "filename", None)
        return f"error: {error.strerror}" + (f": {where}" if where else "")
    return f"error: {error}"


def report_error(error: BaseException) -> int:
    """Print `error`'s line on stderr and return its exit code."""
    code = exit_code_for(error)
    print(error_message(error), file=sys.stderr)
    return code


def report_interrupt(stop: KeyboardInterrupt, how_to_continue: str = "") -> int:
    """Print why a command stopped on SIGINT / SIGTERM and return the shell's code for the signal: after a run saved
    its state (`TrainingInterrupted`), its message and `how_to_continue`; before, that nothing was saved."""
    if isinstance(stop, TrainingInterrupted):
        print(f"\n{stop}\n{how_to_continue}", file=sys.stderr)
        return 128 + stop.signum
    print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
    return INTERRUPTED
