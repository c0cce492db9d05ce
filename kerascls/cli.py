"""What every ``python -m kerascls.X`` entry point shares: the argument parser and the log level.

* :class:`Parser` is ``argparse`` with one-line errors (``error: PROG: message``, exit status
  2), did-you-mean for unknown flags and wrong choices, the choices and a meaningful metavar in
  ``--help``, and a ``--log-level`` flag.
* :func:`configure_logging` keeps start-up quiet: TensorFlow's C++ logs (oneDNN, CPU features,
  CUDA probing), absl and ``tensorflow`` Python logging, and the known warnings of the
  libraries below kerascls are hidden unless the level is ``debug``
  (``--log-level debug`` or ``KERASCLS_LOG_LEVEL=debug``). It sets environment variables, so it
  must run before TensorFlow is imported; :func:`cli_main` calls it first
  thing, and the parser calls it again with the ``--log-level`` it parsed.
* :func:`progress_verbose` picks Keras' one-line-per-epoch output when stdout is not a
  terminal, so piped output holds no ANSI codes, carriage returns or backspaces.

This module imports nothing heavier than the standard library: ``--help`` and usage errors
never wait for TensorFlow.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import functools
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable

from kerascls.errors import UserError

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "warning"
LOG_LEVEL_ENV = "KERASCLS_LOG_LEVEL"

# Libraries whose Python warnings and log records are start-up noise for a kerascls user
# (retracing notes, tf.data hints, Keras input-structure notes); shown with --log-level debug.
QUIET_MODULES = ("tensorflow", "tf_keras", "tensorflow_probability", "keras", "absl", "h5py",
                 "google", "jax", "torch", "matplotlib", "PIL", "tensorflow_datasets")
# Environment variables read by TensorFlow's C++ runtime and gRPC when they start, with the
# quiet value (errors included: "failed call to cuInit" on a machine without a GPU is one).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}
_USER_ENV = {k: os.environ.get(k) for k in QUIET_ENV}  # what the user set, kept as it is
_WARNING_FILTER = {"action": "ignore", "module": rf"({'|'.join(QUIET_MODULES)})(\.|$)"}
_state = {"level": None, "filtered": False, "native_filter": None}


# Lines TensorFlow's C++ runtime writes straight to file descriptor 2, whatever
# TF_CPP_MIN_LOG_LEVEL says (absl prints everything before absl::InitializeLog): "I0000 00:00:...
# port.cc:153] oneDNN custom operations are on", CUDA probing, MLIR and converter chatter.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|fully_quantize: \d, inference_type: )")


class NativeLogFilter:
    """Drop TensorFlow's native log lines from this process's stderr (file descriptor 2).

    Native code writes to the descriptor, not to ``sys.stderr``, so the descriptor is pointed
    at a pipe and a thread copies every other line (and any partial line that cannot be a
    native log line, such as a progress bar) to the real stderr. :meth:`close` (also run at
    exit) puts the descriptor back and drains the pipe.
    """

    def __init__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True,
                                       name="kerascls-stderr")
        self.thread.start()
        atexit.register(self.close)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.saved, data)
        except OSError:
            pass

    def _pump(self, read_fd: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    self._write(line + b"\n")
            if pending and not pending[:1] in (b"I", b"W", b"E", b"T", b"f"):
                self._write(pending)
                pending = b""
        if pending and not NATIVE_LOG_LINE.match(pending):
            self._write(pending)
        os.close(read_fd)

    def close(self) -> None:
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)  # the pipe's last writer goes: the thread sees the end
        self.thread.join(timeout=2)
        os.close(self.saved)
        self.saved = None


def _is_kerascls_command() -> bool:
    """True in a ``python -m kerascls.X`` process (not in a test runner or a notebook)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec and (spec.name or "").startswith("kerascls."))


def log_level_from_env() -> str:
    """``$KERASCLS_LOG_LEVEL`` (lower-cased), or the default ``warning``."""
    raw = os.environ.get(LOG_LEVEL_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_LOG_LEVEL
    if raw not in LOG_LEVELS:
        raise UserError(f"{LOG_LEVEL_ENV} must be one of {', '.join(LOG_LEVELS)}. "
                        f"Received: {LOG_LEVEL_ENV}={raw}")
    return raw


def configure_logging(level: str | None = None) -> str:
    """Apply ``level`` (default: :func:`log_level_from_env`) and return it.

    ``debug`` shows everything: TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL=0``), the
    libraries' Python warnings and log records, and kerascls's debug messages. The other
    levels hide the libraries' start-up noise and, when asked for (flag or environment), set
    the level of kerascls's own loggers; an environment variable the user set
    (``TF_CPP_MIN_LOG_LEVEL`` ...) is kept. Calling it again with another
    level undoes the previous call, as long as TensorFlow has not started yet.
    """
    explicit = bool(level or os.environ.get(LOG_LEVEL_ENV, "").strip())
    level = (level or log_level_from_env()).lower()
    if level not in LOG_LEVELS:
        raise UserError(f"--log-level must be one of {', '.join(LOG_LEVELS)}. "
                        f"Received: {level}")
    debug = level == "debug"
    for name, quiet in QUIET_ENV.items():
        if _USER_ENV[name] is not None:
            os.environ[name] = _USER_ENV[name]
        elif debug:
            os.environ.pop(name, None)
        else:
            os.environ[name] = quiet
    if debug and _state["filtered"]:
        warnings.filters[:] = [f for f in warnings.filters
                               if not (f[0] == "ignore" and f[3] is not None
                                       and f[3].pattern == _WARNING_FILTER["module"])]
        warnings.filterwarnings("default")  # show each warning once per place
        _state["filtered"] = False
    elif not debug and not _state["filtered"]:
        warnings.filterwarnings(**_WARNING_FILTER)
        _state["filtered"] = True
    if explicit:  # otherwise each entry point keeps its own (the server logs at INFO)
        logging.getLogger("kerascls").setLevel(level.upper())
    for name in QUIET_MODULES:
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.ERROR)
    native = _state["native_filter"]
    if debug and native is not None:
        native.close()
        _state["native_filter"] = None
    elif not debug and native is None and _is_kerascls_command() and "tensorflow" not in \
            sys.modules:
        try:
            _state["native_filter"] = NativeLogFilter()
        except OSError:  # no descriptor 2 to point elsewhere: nothing to keep quiet either
            pass
    if "absl.logging" in sys.modules:  # absl keeps its own verbosity once imported
        sys.modules["absl.logging"].set_verbosity("info" if debug else "error")
    _state["level"] = level
    return level


def current_log_level() -> str:
    """The level :func:`configure_logging` applied last (the environment's before any call)."""
    return _state["level"] or log_level_from_env()


def progress_verbose(verbose: int, stream=None) -> int:
    """Keras ``verbose`` for ``model.fit``: a progress bar (1) only on a terminal.

    Keras' bar redraws itself with ``\\r``, backspaces and ANSI colour codes whenever it
    thinks the output is interactive, which includes every POSIX pipe; piped or redirected
    output gets one plain line per epoch (2) instead.
    """
    stream = sys.stdout if stream is None else stream
    if verbose == 1 and not (hasattr(stream, "isatty") and stream.isatty()):
        return 2
    return verbose


# ---------------------------------------------------------------------------------------------
# the parser

METAVARS = {int: "N", float: "X", str: "TEXT", bool: "BOOL"}


NAMED_METAVARS = {"out": "DIR", "pretrained": "FILE", "config": "FILE", "layer": "LAYER",
                  "dataset": "SOURCE", "model": "NAME", "formats": "LIST", "augment": "LIST",
                  "methods": "LIST", "models": "LIST", "split": "SPLIT"}


def metavar_for(name: str, typ: type = str) -> str:
    """A metavar that says what a flag takes, from its name and type (``--output-dir DIR``)."""
    words = name.lower().replace("-", "_").strip("_").split("_")
    last = words[-1]
    if name in NAMED_METAVARS:
        return NAMED_METAVARS[name]
    if last in ("dir", "path", "file", "name", "size", "pattern"):
        return {"file": "FILE", "dir": "DIR", "path": "PATH", "name": "NAME",
                "size": "PX" if "image" in words else "N", "pattern": "PATTERN"}[last]
    return METAVARS.get(typ, "VALUE")


class HelpFormatter(argparse.HelpFormatter):
    """Default values in the help text, and the wider columns a long flag list needs."""

    def __init__(self, prog, indent_increment=2, max_help_position=34, width=None):
        super().__init__(prog, indent_increment, max_help_position, width)


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors, did-you-mean hints and a ``--log-level`` flag.

    Errors print ``error: PROG: message`` on stderr and exit with status 2 (``SystemExit``;
    :func:`cli_main` turns it into the entry point's return value). Parsing
    applies the log level (:func:`configure_logging`) before the caller imports anything
    heavy.

    Args:
        prog: the command, e.g. ``"python -m kerascls.train"``.
        description: first line of ``--help``.
        log_level: add ``--log-level`` (a subcommand's parser takes it too; the top-level
            parser applies it).
    """

    def __init__(self, prog: str, description: str | None = None, *, log_level: bool = True,
                 **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)
        self._top_level = not isinstance(self, _SubcommandParser)
        if log_level:
            self.add_argument(
                "--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                help=f"kerascls messages from this level up; debug also shows TensorFlow's "
                     f"start-up logs and library warnings (default: ${LOG_LEVEL_ENV} or "
                     f"{DEFAULT_LOG_LEVEL})")

    def add_argument(self, *args, **kwargs):
        """``add_argument``, with a metavar from the flag's name and type when none is given."""
        action = super().add_argument(*args, **kwargs)
        if (action.option_strings and action.metavar is None and action.choices is None
                and isinstance(action, argparse._StoreAction)):
            action.metavar = metavar_for(action.dest, action.type or str)
        elif (not action.option_strings and action.metavar is None
              and isinstance(action, argparse._StoreAction)):
            action.metavar = action.dest.upper()
        return action

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", _SubcommandParser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if self._top_level:
            try:
                configure_logging(getattr(ns, "log_level", None))
            except UserError as exc:
                self.error(str(exc))
        return ns, extras

    def error(self, message: str):
        print(f"error: {self.prog}: {self._explain(message)}", file=sys.stderr)
        raise SystemExit(2)

    def _explain(self, message: str) -> str:
        if message.startswith("unrecognized arguments:"):
            bad = message.split(":", 1)[1].split()
            flags = [o for a in self._actions for o in a.option_strings]
            hints = []
            for b in bad:
                close = difflib.get_close_matches(b.split("=")[0], flags, n=1)
                hints.append(f"{b} (did you mean {close[0]}?)" if close else b)
            return "unknown flag: " + ", ".join(hints)
        if "invalid choice:" in message:
            # "argument --x: invalid choice: 'adm' (choose from 'adam', 'sgd')"
            head, _, rest = message.partition(": invalid choice: ")
            received, _, allowed = rest.partition(" (choose from ")
            received = received.strip("'\"")
            choices = [c.strip(" '\")") for c in allowed.rstrip(")").split(",") if c.strip()]
            close = difflib.get_close_matches(received, choices, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            what = head.replace("argument ", "")
            if what.startswith("{"):
                what = "the command"
            return f"{what} must be one of {', '.join(choices)}. Received: {received}.{hint}"
        return message


class _SubcommandParser(Parser):
    """A subcommand's parser: its parent applies the log level once everything is parsed."""


# ---------------------------------------------------------------------------------------------
# the entry-point wrapper

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
