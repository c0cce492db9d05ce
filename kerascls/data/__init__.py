"""Data sources, splits, preprocessing and the tf.data pipeline."""

from kerascls.data.sources import DatasetSplits, load_dataset

__all__ = ["DatasetSplits", "load_dataset"]
