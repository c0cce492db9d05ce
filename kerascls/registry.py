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
        framework: ``"keras"`` for Keras 3 models, ``"tf_keras"`` for the TFP Bayesian models.
        paper: reference for the architecture.
        task: ``"classify"`` (image in, class probabilities out) or ``"detect"`` (YOLO heads).
    """

    name: str
    builder: Callable[..., Any]
    family: str
    default_size: int = 32
    min_size: int = 8
    framework: str = "keras"
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
    framework: str = "keras",
    paper: str = "",
    task: str = "classify",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` under ``name``."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, family, default_size, min_size, framework, paper,
                                    task)
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
