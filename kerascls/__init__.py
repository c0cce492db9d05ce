"""kerascls: image classification from a dataset to a device.

The public API::

    from kerascls import build_model, list_models, load_dataset
    model = build_model("lenet", (32, 32, 3), 10, normalize="unit")
"""

__version__ = "0.1.0"

from kerascls.registry import build_model, get_spec, list_models  # noqa: E402
from kerascls.data.sources import load_dataset  # noqa: E402

__all__ = ["__version__", "build_model", "get_spec", "list_models", "load_dataset"]
