"""User-facing errors: :class:`UserError` and did-you-mean messages.

Entry points wrap their ``main`` in :func:`kerascls.cli.cli_main`, which reports a
:class:`UserError` as one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def did_you_mean(kind: str, received: str, choices: Iterable[str],
                 list_hint: str = "python -m kerascls.models list") -> str:
    """Build "unknown X 'y'. Did you mean: a, b? Available: ..." for an unknown name."""
    choices = sorted(choices)
    close = difflib.get_close_matches(received, choices, n=3, cutoff=0.5)
    msg = f"unknown {kind} '{received}'."
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    if len(choices) <= 12:
        msg += f" Available: {', '.join(choices)}."
    else:
        msg += f" {len(choices)} available; see {list_hint}."
    return msg
