"""User-facing errors.

Anything a user can cause (missing data, a corrupt image, an impossible config) is raised as a
:class:`UserError`. The entry points catch it and print its message as one paragraph, with no
traceback, and exit with status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import textwrap


class UserError(Exception):
    """An error the user can fix: the message names the file or option and what to do."""


class ConfigError(UserError):
    """An impossible or unknown configuration value."""


class DataError(UserError):
    """Missing, incomplete or corrupt data on disk."""


# A DataLoader worker re-raises our error in the main process with the worker's traceback in the
# message; the user's paragraph is the text after this marker on the last line.
_WORKER_MARKER = "Original Traceback"


def _message(error: UserError) -> str:
    text = str(error)
    if _WORKER_MARKER in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def find_user_error(error: BaseException) -> UserError | None:
    """The UserError that caused ``error`` (Hydra's instantiate and Lightning wrap exceptions)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def format_user_error(error: UserError) -> str:
    """One wrapped paragraph, prefixed with the kind of error."""
    kind = "configuration error" if isinstance(error, ConfigError) else "data error"
    if not isinstance(error, (ConfigError, DataError)):
        kind = "error"
    text = _message(error)
    # never split a path or a command across lines
    return textwrap.fill(
        f"ranking_reg {kind}: {text}", width=100, break_on_hyphens=False, break_long_words=False
    )


def exit_with_user_error(error: UserError) -> None:
    """Print the paragraph on stderr and exit with status 2 (no traceback)."""
    print(format_user_error(error), file=sys.stderr)
    raise SystemExit(2)


def report_user_errors(function):
    """Decorator for entry points: a UserError anywhere in the cause chain becomes one paragraph
    on stderr and exit status 2; anything else propagates with its traceback."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            exit_with_user_error(user_error)

    return wrapper
