"""The Keras backend a process runs on, checked before Keras is imported.

Keras fixes its backend when it is first imported (``KERAS_BACKEND``, else ``~/.keras/keras.json``,
else TensorFlow). An unknown name, or a backend whose package is missing, makes that import fail
with a traceback from deep inside Keras; :func:`check_backend` turns both into one line that says
what to do. Every ``python -m kerascls.X`` entry point calls it first (see
:func:`kerascls.cli.cli_main`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from kerascls.errors import UserError

# backend name -> the package it needs, and how to install it
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorflow": ("tensorflow", "pip install kerascls"),
    "jax": ("jax", "pip install 'kerascls[jax]'"),
    "torch": ("torch", "pip install 'kerascls[torch]'"),
}


def backend_name() -> str:
    """The backend Keras uses (or will use once imported) in this process."""
    from kerascls.distribute import current_backend

    return current_backend()


def check_backend() -> str:
    """Return the backend name; refuse an unknown one or one whose package is not installed.

    Raises:
        UserError: ``KERAS_BACKEND=numpy`` (kerascls trains and exports on tensorflow, jax and
            torch only) or ``KERAS_BACKEND=jax`` without JAX installed.
    """
    name = backend_name()
    if name not in BACKENDS:
        raise UserError(f"KERAS_BACKEND must be one of {', '.join(BACKENDS)}. Received: {name}")
    if "keras" in sys.modules:
        return name
    package, install = BACKENDS[name]
    try:
        # Looked up, not imported: importing TensorFlow here would cost every --help seconds.
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"No module named '{package}'")
    except ImportError as exc:
        raise UserError(f"KERAS_BACKEND={name} needs the {package} package, which cannot be "
                        f"imported ({type(exc).__name__}: {_first_line(exc)}); "
                        f"install it with {install}, or run on another backend, e.g. "
                        "KERAS_BACKEND=tensorflow") from None
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
