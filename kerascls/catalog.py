"""What the registry says about each model, without importing Keras.

The model families register themselves when their modules are imported, and those modules
import Keras, which starts TensorFlow (seconds). ``python -m kerascls.models list``, the model
check of ``python -m kerascls.train`` and their did-you-mean errors only need the names, sizes
and papers, so :func:`models` keeps them in a small JSON cache
(``$KERASCLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kerascls``, else ``~/.cache/kerascls``), one
file per installed copy of the package. The cache records the size and modification time of
every kerascls module loaded when it was written (the families, the registry and what they
import); when any of them changed (or the cache is missing or unreadable) the families are
imported, and the cache written again.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import sys
from pathlib import Path

from kerascls import __version__
from kerascls.errors import UserError, did_you_mean

PACKAGE_DIR = Path(__file__).resolve().parent
# one cache per installed copy of kerascls: two checkouts (or a checkout and a wheel) with the
# same file stamps must not read each other's model lists
CACHE_NAME = f"models-{hashlib.sha1(str(PACKAGE_DIR).encode()).hexdigest()[:12]}.json"
FIELDS = ("name", "family", "default_size", "min_size", "engines", "paper", "task")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A :class:`kerascls.registry.ModelSpec` without its builder."""

    name: str
    family: str
    default_size: int = 32
    min_size: int = 8
    engines: tuple[str, ...] = ("keras",)
    paper: str = ""
    task: str = "classify"


def cache_dir() -> Path:
    """Where the catalog is cached."""
    if os.environ.get("KERASCLS_CACHE_DIR"):
        return Path(os.environ["KERASCLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kerascls"


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_mtime_ns, st.st_size]


def _read_cache() -> list[ModelInfo] | None:
    try:
        data = json.loads((cache_dir() / CACHE_NAME).read_text())
        if data.get("kerascls") != __version__ or data.get("python") != sys.version:
            return None
        for stamp in data["sources"]:
            if _stamp(stamp[0]) != stamp:
                return None
        return [ModelInfo(**{k: tuple(row[k]) if k == "engines" else row[k]
                             for k in FIELDS if k in row}) for row in data["models"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kerascls_files() -> list[str]:
    """Files of every loaded kerascls module: the families, the registry and what they use."""
    files = {getattr(m, "__file__", None) for name, m in list(sys.modules.items())
             if name == "kerascls" or name.startswith("kerascls.")}
    return sorted(f for f in files if f and os.path.isfile(f))


def refresh() -> list[ModelInfo]:
    """Import the model families, write the cache and return every model's info."""
    from kerascls import registry

    names = registry.list_models("*", task=None)
    specs = [registry.get_spec(n) for n in names]
    infos = [ModelInfo(**{k: getattr(s, k, ModelInfo.__dataclass_fields__[k].default)
                          for k in FIELDS}) for s in specs]
    data = {"kerascls": __version__, "python": sys.version,
            "sources": [_stamp(f) for f in _kerascls_files()],
            "models": [dataclasses.asdict(i) for i in infos]}
    try:
        from kerascls.fileio import atomic_write_text

        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_dir() / CACHE_NAME, json.dumps(data, indent=1))
    except OSError:
        pass  # a read-only home only costs the next command its start-up time
    return infos


def models(pattern: str = "*", task: str | None = "classify") -> list[ModelInfo]:
    """Infos of the models matching the shell-style ``pattern`` (of ``task``), sorted by name."""
    infos = _read_cache() or refresh()
    return sorted((i for i in infos if fnmatch.fnmatch(i.name, pattern)
                   and (task is None or i.task == task)), key=lambda i: i.name)


def info(name: str) -> ModelInfo:
    """The info of model ``name``; an unknown name raises the registry's did-you-mean error.

    A model registered in this process outside the families (a user's own builder) is not in
    the cache; it is looked up in the registry itself.
    """
    found = {i.name: i for i in models("*", task=None)}
    if name in found:
        return found[name]
    from kerascls import registry

    if name in registry.registered_names():
        spec = registry.get_spec(name)
        return ModelInfo(**{k: getattr(spec, k) for k in FIELDS if hasattr(spec, k)})
    raise UserError(did_you_mean("model", name, found))
