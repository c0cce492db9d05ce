"""The model registry: names map to builders, with did-you-mean errors.

Each family module registers its variants from a data table::

    for name, cfg in VARIANTS.items():
        register(name, family="resnet", default_size=224)(functools.partial(build_resnet, **cfg))

and users call :func:`build_model` / :func:`list_models`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

from kerascls.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name.

    Attributes:
        name: registry name, e.g. ``"resnet20"``.
        builder: ``builder(input_shape, num_classes, **overrides) -> keras.Model``.
        family: family name (the module it lives in).
        default_size: the input size the model is usually trained at (square).
        min_size: smallest square input the architecture accepts.
        engines: the engines that can build the model, preferred first (see
            :mod:`kerascls.engines`): ``("keras",)`` for Keras 3 models, ``("tfp", "keras")`` for
            the Bayesian models (TFP's Flipout layers, or kerascls' Keras 3 ones).
        paper: reference for the architecture.
        task: ``"classify"`` (image in, class probabilities out) or ``"detect"`` (YOLO heads).
    """

    name: str
    builder: Callable[..., Any]
    family: str
    default_size: int = 32
    min_size: int = 8
    engines: tuple[str, ...] = ("keras",)
    paper: str = ""
    task: str = "classify"


_REGISTRY: dict[str, ModelSpec] = {}

# Modules that register models when imported. Importing is lazy so `import kerascls` stays cheap.
_FAMILY_MODULES = (
    "kerascls.models.classic",
    "kerascls.models.vgg",
    "kerascls.models.resnet",
    "kerascls.models.inception",
    "kerascls.models.densenet",
    "kerascls.models.mobilenet",
    "kerascls.models.mobilenet_v4",
    "kerascls.models.efficientnet",
    "kerascls.models.darknet",
    "kerascls.models.bayesian",
    "kerascls.detect.models",
)
_loaded = False


def register(
    name: str,
    *,
    family: str,
    default_size: int = 32,
    min_size: int = 8,
    engines: tuple[str, ...] = ("keras",),
    paper: str = "",
    task: str = "classify",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` under ``name``."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, family, default_size=default_size,
                                    min_size=min_size, engines=tuple(engines), paper=paper,
                                    task=task)
        return builder

    return deco


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # A family module that does not exist yet is fine; a missing dependency is not.
            if exc.name != mod:
                raise


def registered_names() -> list[str]:
    """Names registered so far in this process, without importing the model families."""
    return sorted(_REGISTRY)


def list_models(pattern: str = "*", task: str | None = "classify") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted.

    Only models of ``task`` (``"classify"`` by default, ``"detect"``) are listed; ``None``
    lists every task.
    """
    _load_families()
    return sorted(n for n, spec in _REGISTRY.items() if fnmatch.fnmatch(n, pattern)
                  and (task is None or spec.task == task))


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name``; unknown names raise with close matches."""
    _load_families()
    if name not in _REGISTRY:
        raise UserError(did_you_mean("model", name, _REGISTRY))
    return _REGISTRY[name]


def build_model(name: str, input_shape=(32, 32, 3), num_classes: int = 10, **overrides):
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`.
        input_shape: ``(H, W, C)`` of the model input.
        num_classes: number of output classes.
        **overrides: family-specific options (``dropout``, ``normalize``, ``width``...).

    Returns:
        A Keras model whose output is class probabilities (softmax, float32).
    """
    spec = get_spec(name)
    return spec.builder(tuple(int(v) for v in input_shape), int(num_classes), **overrides)


# ------------------------------------------------------------------------------ builder arguments

# Builder parameters that other options set (input shape and classes, --normalize, --dropout).
NOT_MODEL_ARGS = ("input_shape", "num_classes", "name", "normalize", "dropout")


def model_arguments(name: str) -> dict[str, Any]:
    """The builder arguments ``--model-arg`` can set for ``name``, with the variant's values."""
    import inspect

    spec = get_spec(name)
    try:
        params = inspect.signature(spec.builder).parameters
    except (TypeError, ValueError):  # pragma: no cover - every registered builder has one
        return {}
    return {p.name: p.default for p in params.values()
            if p.name not in NOT_MODEL_ARGS and p.default is not inspect.Parameter.empty}


def parse_model_arg_pairs(pairs, flag: str = "--model-arg") -> dict[str, Any]:
    """``["depth=20", "widths=16,32,64"]`` -> ``{"depth": 20, "widths": "16,32,64"}``.

    Values are read as YAML scalars or lists (``yaml.safe_load``: never evaluated); their types
    are checked against the builder by :func:`check_model_args`.
    """
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE. Received: {flag} {pair}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _kinds(value) -> set[type]:
    """The scalar types inside a (nested) tuple default."""
    if isinstance(value, (tuple, list)):
        return set().union(*(_kinds(v) for v in value)) if value else set()
    return {type(value)}


def _coerce(key: str, default, value, kinds: set[type] | None = None):
    """``value`` as the type of ``default`` (lists become lists of the default's scalar types)."""
    def bad(expected: str):
        return UserError(f"model argument '{key}' must be {expected}. Received: {key}={value!r}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if isinstance(default, (tuple, list)):
        if isinstance(value, str) and "," in value:
            value = parse_model_arg_pairs([f"v=[{value}]"])["v"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad("a list (e.g. 2,2,2 or [2, 2, 2])")
        kinds = kinds if kinds is not None else (_kinds(default) or {int})
        out = []
        for v in value:
            if isinstance(v, (list, tuple)):
                out.append(_coerce(key, (), v, kinds))
            elif isinstance(v, bool) or type(v) not in kinds | ({int} if float in kinds else set()):
                raise bad("a list of " + " or ".join(sorted(k.__name__ for k in kinds)))
            else:
                out.append(float(v) if float in kinds and int not in kinds else v)
        return out
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float) or default is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def check_model_args(name: str, args: dict[str, Any] | None,
                     input_shape=None) -> dict[str, Any]:
    """Check ``args`` against the builder of ``name``; return them typed (lists, not tuples).

    Unknown keys raise :class:`UserError` with the close matches among the builder's
    parameters; values of the wrong type raise naming the key, the expected type and what was
    received. Combinations the architecture cannot build are refused by the builder itself:
    with ``input_shape`` the model is built once here (and discarded), so they are refused
    before a run starts.
    """
    allowed = model_arguments(name)
    out: dict[str, Any] = {}
    for key, value in (args or {}).items():
        if key not in allowed:
            msg = did_you_mean("model argument", str(key), allowed).replace(
                "'.", f"' for {name}.", 1)
            if key in NOT_MODEL_ARGS:
                msg += f" '{key}' has its own option (--{key.replace('_', '-')})."
            raise UserError(msg)
        out[key] = _coerce(key, allowed[key], value)
    if out and input_shape is not None:
        import keras

        build_model(name, input_shape, 2, **model_arg_overrides(out))
        keras.backend.clear_session()
    return out


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def model_arg_overrides(args: dict[str, Any] | None) -> dict[str, Any]:
    """Checked model arguments as builder keywords (lists become tuples)."""
    return {k: _tuples(v) for k, v in (args or {}).items()}
