"""User-facing errors and the one-line-error wrapper every entry point uses."""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable, Iterable


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


# entry points that never import Keras, so that KERAS_BACKEND does not concern them
_KERAS_FREE = ("kerascls.serving",)


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point: UserError and other failures become one line on stderr.

    The log level (``$KERASCLS_LOG_LEVEL``, quiet by default) is applied before the entry point
    runs, so TensorFlow starts quiet; the entry point's parser applies ``--log-level``. A
    ``SystemExit`` from the parser (``--help``, a usage error) becomes the return value. Set
    ``KERASCLS_DEBUG=1`` to see the full traceback of an unexpected error.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        prog = (fn.__module__ or "kerascls").replace("__main__", "kerascls")
        try:
            from kerascls.cli import configure_logging

            configure_logging()
            spec = getattr(fn, "__globals__", {}).get("__spec__")
            if not (getattr(spec, "name", None) or prog).startswith(_KERAS_FREE):
                from kerascls.backend import check_backend

                check_backend()  # before Keras is imported: one line for a bad KERAS_BACKEND
            return int(fn(*args, **kwargs) or 0)
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                return int(exc.code or 0)
            print(f"error: {exc.code}", file=sys.stderr)
            return 1
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
            if os.environ.get("KERASCLS_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(
                f"error: {prog} failed: {type(exc).__name__}: {first} "
                "(set KERASCLS_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
            return 1

    return wrapper
