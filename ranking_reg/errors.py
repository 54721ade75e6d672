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


def format_user_error(error: UserError) -> str:
    """One wrapped paragraph, prefixed with the kind of error."""
    kind = "configuration error" if isinstance(error, ConfigError) else "data error"
    if not isinstance(error, (ConfigError, DataError)):
        kind = "error"
    text = " ".join(str(error).split())
    return textwrap.fill(f"ranking_reg {kind}: {text}", width=100)


def exit_with_user_error(error: UserError) -> None:
    """Print the paragraph on stderr and exit with status 2 (no traceback)."""
    print(format_user_error(error), file=sys.stderr)
    raise SystemExit(2)
