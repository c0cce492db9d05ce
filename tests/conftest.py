"""Shared fixtures: quiet TensorFlow, a trained digits run and a trained sentiment run per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


def require_fashion_mnist():
    """The directory of the real Fashion-MNIST files. Skips where neither the Debian package nor
    Keras' cache has them, except in CI, which installs the package and sets
    KERASCLS_REQUIRE_FASHION_MNIST: there a missing dataset fails the test."""
    from kerascls.data import mnist
    from kerascls.errors import UserError

    mnist.debian_dir.cache_clear()
    try:
        return mnist.find_fashion_mnist("")
    except UserError as exc:
        if os.environ.get("KERASCLS_REQUIRE_FASHION_MNIST"):
            pytest.fail(f"CI requires Fashion-MNIST: {exc}")
        pytest.skip(f"Fashion-MNIST is not installed here: {exc}")


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
