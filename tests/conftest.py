"""Shared fixtures: quiet TensorFlow, a trained digits run and a trained sentiment run per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


def train_run(tmp_root, *flags):
    """Train through the real CLI entry point and return the run directory."""
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    parser = make_parser("train", "")
    cfg = resolve(parser.parse_args(["--output-dir", str(tmp_root), "--verbose", "0", *flags]))
    return train(cfg)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """lenet on digits at 16x16, no exports (export tests export what they need)."""
    root = tmp_path_factory.mktemp("runs")
    return train_run(root, "--dataset", "digits", "--model", "lenet", "--image-size", "16",
                     "--epochs", "15", "--formats", "")


@pytest.fixture(scope="session")
def sentiment_run(tmp_path_factory):
    """The lab's seed CNN on the synthetic sentiment images."""
    root = tmp_path_factory.mktemp("runs")
    return train_run(root, "--dataset", "sentiment", "--model", "seed_cnn", "--epochs", "15",
                     "--formats", "")
