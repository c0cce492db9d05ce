import numpy as np
import pytest
from PIL import Image

from kerascls.data import load_dataset
from kerascls.data.pipeline import Augmenter, class_weights, make_dataset
from kerascls.errors import UserError


def test_digits_is_real_and_stratified():
    s = load_dataset("digits", 0, seed=1)
    total = len(s.y_train) + len(s.y_val) + len(s.y_test)
    assert total == 1797 and s.x_train.shape[1:] == (8, 8, 3) and s.num_classes == 10
    assert 0 <= s.x_train.min() and s.x_train.max() <= 255
    # stratified: every class present in the test split in proportion
    counts = np.bincount(s.y_test, minlength=10)
    assert counts.min() >= 30
    again = load_dataset("digits", 0, seed=1)
    np.testing.assert_array_equal(s.y_test, again.y_test)
    other = load_dataset("digits", 0, seed=2)
    assert not np.array_equal(s.y_test, other.y_test)


def test_sentiment_colours_size_and_imbalance():
    s = load_dataset("sentiment", 0, num_examples=200, imbalance=3.0, noise=0.0, seed=0)
    x = np.concatenate([s.x_train, s.x_val, s.x_test]) / 255.0
    y = np.concatenate([s.y_train, s.y_val, s.y_test])
    assert x.shape[1:] == (8, 8, 3)
    np.testing.assert_allclose(x[y == 0].mean(axis=(0, 1, 2)), [0.1, 0.2, 0.1], atol=0.01)
    np.testing.assert_allclose(x[y == 1].mean(axis=(0, 1, 2)), [0.9, 0.8, 0.7], atol=0.01)
    assert (y == 0).sum() == 150 and (y == 1).sum() == 50
    assert s.class_names == ["negative", "positive"]
    w = class_weights(y, 2)
    assert w[1] == pytest.approx(2.0) and w[0] == pytest.approx(200 / 300)


def _write_folder(root, classes=("cat", "dog"), n=6, size=20):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = np.full((size, size + 4, 3), 40 + 160 * ci, np.uint8)
            arr = np.clip(arr + rng.integers(0, 20, arr.shape), 0, 255).astype(np.uint8)
            ext = ["png", "jpg", "bmp", "gif"][i % 4]
            Image.fromarray(arr).save(root / c / f"{i}.{ext}")


def test_folder_dataset_resizes_splits_and_skips_corrupt(tmp_path, caplog):
    _write_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = load_dataset(f"folder:{tmp_path}", 16, seed=0)
    assert s.class_names == ["cat", "dog"]
    assert s.x_train.shape[1:] == (16, 16, 3)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 12
    assert "broken.png" in caplog.text


def test_folder_with_train_test_subfolders(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "test", n=3)
    s = load_dataset(f"folder:{tmp_path}", 8, seed=0)
    assert len(s.y_test) == 6 and len(s.y_train) + len(s.y_val) == 12


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "nope", "dataset folder not found"),
    (lambda p: [(p / c).mkdir() for c in "ab"] and (p / "a" / "x.txt").write_text("hi") and p,
     "no readable images"),
    (lambda p: [(p / "a").mkdir(), (p / "a" / "x.png").write_bytes(b"")] and p,
     "has one class sub-folder"),
    (lambda p: p, "no class sub-folders"),
])
def test_folder_errors(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(UserError, match=needle):
        load_dataset(f"folder:{path}", 8)


def test_unknown_dataset_suggests():
    with pytest.raises(UserError, match="Did you mean: digits"):
        load_dataset("digit")


def test_pipeline_batches_one_hot_and_augments():
    x = np.random.default_rng(0).uniform(0, 255, (10, 8, 8, 3)).astype(np.float32)
    y = np.arange(10) % 2
    ds = make_dataset(x, y, 2, 4, training=True, augment=("crop", "flip", "jitter", "mixup"),
                      seed=0)
    xb, yb = next(iter(ds))
    assert xb.shape == (4, 8, 8, 3) and yb.shape == (4, 2)
    np.testing.assert_allclose(np.asarray(yb).sum(axis=1), 1.0, atol=1e-5)
    assert float(np.asarray(xb).min()) >= 0.0 and float(np.asarray(xb).max()) <= 255.0
    plain = next(iter(make_dataset(x, y, 2, 10)))[0]
    np.testing.assert_array_equal(np.asarray(plain), x)
    out = np.asarray(Augmenter(("flip",), 8, seed=3).images(x))
    assert out.shape == x.shape


def test_array_feed_gives_every_image_once_per_epoch_and_reshuffles():
    from kerascls.data.pipeline import array_feed

    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    y = np.arange(10) % 3
    feed = array_feed(x, y, 3, 4, training=True, seed=7)
    assert len(feed) == 3

    def epoch():
        batches = [feed[i] for i in range(len(feed))]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        order = images[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(labels, np.eye(3)[y[order]])
        return order

    first = epoch()
    assert sorted(first) == list(range(10)) and list(first) != list(range(10))
    feed.on_epoch_end()
    second = epoch()
    assert sorted(second) == list(range(10)) and list(second) != list(first)
    again = array_feed(x, y, 3, 4, training=True, seed=7)
    assert list(np.concatenate([again[i][0] for i in range(3)])[:, 0, 0, 0].astype(int)) == \
        list(first)
    plain = array_feed(x, y, 3, 4)
    assert list(np.concatenate([plain[i][0] for i in range(3)])[:, 0, 0, 0]) == list(range(10))


def test_make_feed_keeps_tf_data_on_tensorflow_and_for_augmentation():
    import tensorflow as tf

    from kerascls.data.pipeline import make_feed

    x = np.zeros((8, 4, 4, 3), np.float32)
    y = np.zeros(8, np.int64)
    assert isinstance(make_feed(x, y, 2, 4, training=True), tf.data.Dataset)
    assert isinstance(make_feed(x, y, 2, 4, training=True, augment=("flip",)), tf.data.Dataset)
