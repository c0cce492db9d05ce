"""The input pipeline and the augmentation layers.

:func:`make_feed` is what training feeds a model: the tf.data pipeline of :func:`make_dataset`
(cache, shuffle, batch, augment, prefetch) on the tensorflow backend and wherever augmentations
run, and on jax and torch without augmentation (and outside a Keras distribution) a
:class:`keras.utils.PyDataset` that gathers shuffled batches from the arrays in the training
thread (:func:`array_feed`). There tf.data's own threads only compete with the backend's for the
cores: on 2 cores the tf.data feed gave 0.70-0.96 (jax) and 0.79-1.07 (torch) of the in-memory
speed from run to run, the array feed 1.00-1.03. Labels are one-hot so that mixup, cutmix and
label smoothing work on every backend. Augmentations are Keras preprocessing layers, applied on
batches inside tf.data.
"""

from __future__ import annotations

import numpy as np

from kerascls.config import AUGMENTATIONS


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"crop,flip"`` -> ``("crop", "flip")``; names are validated by :mod:`kerascls.config`."""
    names = tuple(a.strip() for a in (spec or "").split(",") if a.strip())
    for n in names:
        if n not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {n!r}; allowed: {', '.join(AUGMENTATIONS)}")
    return names


class Augmenter:
    """Batch augmentation from Keras preprocessing layers, used inside ``tf.data.Dataset.map``.

    * ``crop``: zero-pad by ``size // 8`` (at least 1 pixel) and random-crop back (pad then crop);
    * ``flip``: horizontal flip with p = 0.5;
    * ``jitter``: brightness and contrast multiplied by factors drawn from U(0.8, 1.2);
    * ``rotation``: up to +-18 degrees; ``zoom``: up to +-10%;
    * ``mixup`` (alpha 0.2) and ``cutmix`` mix images and their one-hot labels.
    """

    def __init__(self, names, image_size: int, seed: int = 0):
        import keras

        self.names = tuple(names)
        self.image_size = image_size
        self.seed = seed
        pad = max(1, image_size // 8)
        L = keras.layers
        self._geometric = []
        if "crop" in self.names:
            self._geometric += [L.ZeroPadding2D(pad), L.RandomCrop(image_size, image_size, seed=seed)]
        if "flip" in self.names:
            self._geometric.append(L.RandomFlip("horizontal", seed=seed + 1))
        if "rotation" in self.names:
            self._geometric.append(L.RandomRotation(0.05, fill_mode="constant", seed=seed + 2))
        if "zoom" in self.names:
            self._geometric.append(L.RandomZoom(0.1, fill_mode="constant", seed=seed + 3))
        self._contrast = L.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4) \
            if "jitter" in self.names else None
        self._mixers = []
        if "mixup" in self.names:
            self._mixers.append(L.MixUp(alpha=0.2, seed=seed + 5))
        if "cutmix" in self.names:
            self._mixers.append(L.CutMix(factor=1.0, seed=seed + 6))

    @property
    def active(self) -> bool:
        return bool(self.names)

    def images(self, x, training: bool = True):
        """Geometric and photometric augmentation of a float32 0..255 batch."""
        import tensorflow as tf

        for layer in self._geometric:
            x = layer(x, training=training)
        if self._contrast is not None:
            factor = tf.random.uniform((tf.shape(x)[0], 1, 1, 1), 0.8, 1.2)
            x = tf.clip_by_value(x * factor, 0.0, 255.0)
            x = self._contrast(x, training=training)
        return x

    def __call__(self, x, y):
        x = self.images(x, training=True)
        for mixer in self._mixers:
            out = mixer({"images": x, "labels": y}, training=True)
            x, y = out["images"], out["labels"]
        return x, y


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, *,
                 training: bool = False, augment: tuple[str, ...] = (), seed: int = 0):
    """A batched ``tf.data.Dataset`` of ``(images float32 0..255, one-hot labels)``.

    Args:
        x: images (N, H, W, 3), float32 0..255, already resized.
        y: integer labels (N,).
        num_classes: depth of the one-hot labels.
        batch_size: global batch size.
        training: shuffle (seeded, reshuffled each epoch) and augment.
        augment: augmentation names (see :class:`Augmenter`); used only when ``training``.
        seed: shuffle and augmentation seed.
    """
    import tensorflow as tf

    images = tf.constant(np.asarray(x, dtype=np.float32))
    labels = tf.one_hot(np.asarray(y, dtype=np.int64), num_classes)
    # Shuffle and batch indices, then gather whole batches: cheap on 2 cores, no per-element work.
    ds = tf.data.Dataset.range(len(x)).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
                                  deterministic=True)
    if training and augment:
        aug = Augmenter(augment, int(x.shape[1]), seed)
        ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def array_feed(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, *,
               training: bool = False, seed: int = 0):
    """A :class:`keras.utils.PyDataset` of ``(images float32 0..255, one-hot labels)`` batches.

    The same batches as :func:`make_dataset` without augmentation: with ``training`` the order
    is a seeded permutation drawn again at each epoch end, otherwise the arrays' own order.
    Batches are gathered in the thread that trains (no worker threads to share the cores with).
    """
    import keras

    images = np.asarray(x, dtype=np.float32)
    eye = np.eye(num_classes, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)

    class ArrayFeed(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            if not training:
                return np.arange(len(images))
            return np.random.default_rng([seed, self.epoch]).permutation(len(images))

        def __len__(self):
            return -(-len(images) // batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            return images[idx], eye[labels[idx]]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return ArrayFeed()


def make_feed(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, *,
              training: bool = False, augment: tuple[str, ...] = (), seed: int = 0):
    """What training feeds the model: :func:`array_feed` on jax and torch without augmentation,
    else :func:`make_dataset` (arguments as there). Under a Keras distribution (jax
    ``--strategy data-parallel``) it stays tf.data, whose batches the distribution shards."""
    import keras

    if (keras.backend.backend() != "tensorflow" and not (training and augment)
            and keras.distribution.distribution() is None):
        return array_feed(x, y, num_classes, batch_size, training=training, seed=seed)
    return make_dataset(x, y, num_classes, batch_size, training=training, augment=augment,
                        seed=seed)


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """'balanced' class weights: n_samples / (n_classes * count_c), as scikit-learn defines them."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    w = len(y) / (num_classes * counts)
    return {i: float(v) for i, v in enumerate(w)}
