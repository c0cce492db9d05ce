"""``python -m kerascls.explain RUN_DIR IMAGE...``: which pixels drive a classification.

Three methods, each giving one non-negative map per image at the model's input size:

* ``saliency``: the vanilla gradient (Simonyan et al. 2014), the lab's method: the largest
  absolute gradient over the colour channels of the class score with respect to the input pixels.
* ``smoothgrad``: the gradient averaged over ``samples`` copies of the image with Gaussian noise of
  standard deviation ``noise`` times the pixel range (Smilkov et al. 2017), reduced like saliency.
* ``gradcam``: Grad-CAM (Selvaraju et al. 2017): the feature maps of a convolutional layer
  weighted by the spatial mean of the class score's gradient, summed over channels, rectified and
  upsampled (bilinear) to the input size. The layer is the last one with a 4-D output and a
  spatial size above 1x1, or the one ``--layer`` names.

The class score is the pre-softmax logit of the explained class (the ``logits`` layer, or the
input of the final softmax); models without either use the log-probability. The explained class
is the predicted one unless ``--class`` names another.

Outputs, next to each input image (or in ``--out``): ``<stem>.<method>.png`` (input, map and
overlay) and ``<stem>.<method>.npy`` (the raw float32 map, input height x width).
``--misclassified K`` also writes ``RUN_DIR/explain/`` galleries of the ``K`` worst test errors
and the ``K`` most uncertain test images, with their maps (``wrong.png``, ``uncertain.png``,
``gallery.json`` and one ``.npy`` stack per gallery and method).

Gradients go through the Keras backend's own autodiff (``tf.GradientTape``, ``jax.grad``,
``torch.autograd.grad``; :func:`gradient` is the only backend-specific code), so explain runs on
the tensorflow, jax and torch backends alike. Grad-CAM splits the model at its layer into the
part before it and the part after it, so the layer must separate the two: a block output, not a
layer inside a residual block whose shortcut bypasses it.

Example:
    python -m kerascls.explain runs/lenet-digits digit.png --methods saliency,gradcam
    python -m kerascls.explain runs/lenet-digits --misclassified 8
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kerascls.cli import cli_main
from kerascls.errors import UserError, did_you_mean
from kerascls.fileio import atomic_path, atomic_write_json

METHODS = ("saliency", "smoothgrad", "gradcam")
GALLERY_KINDS = ("correct", "wrong", "uncertain")
DEFAULT_SAMPLES = 25
DEFAULT_NOISE = 0.15
PIXEL_RANGE = 255.0


# ---------------------------------------------------------------------------------------------
# backend and model inspection


def gradient(fn, x: np.ndarray) -> np.ndarray:
    """``d sum(fn(x)) / d x`` through the current Keras backend's autodiff, as float32 numpy.

    ``fn`` maps a backend tensor to per-image scores built from Keras layers and ``keras.ops``;
    each image's score depends on that image only, so the gradient of the sum is each image's
    own gradient.
    """
    import keras

    backend = keras.backend.backend()
    xt = keras.ops.convert_to_tensor(np.asarray(x, np.float32))
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(xt)
            total = tf.reduce_sum(fn(xt))
        grad = tape.gradient(total, xt)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        grad = jax.grad(lambda v: jnp.sum(fn(v)))(xt)
    elif backend == "torch":
        import torch

        xt = xt.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xt).sum(), xt)
    else:
        raise UserError(f"explain takes gradients on the tensorflow, jax or torch backend; "
                        f"the current backend is {backend}")
    return np.asarray(keras.ops.convert_to_numpy(grad), dtype=np.float32)


def parse_methods(spec: str) -> tuple[str, ...]:
    """``"saliency,gradcam"`` -> ``("saliency", "gradcam")``; unknown names raise."""
    names = tuple(m.strip() for m in (spec or "").split(",") if m.strip())
    if not names:
        raise UserError(f"--methods is empty; choose from {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise UserError("--methods: " + did_you_mean("method", name, METHODS))
    return names


def _output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def find_last_conv_layer(model) -> str:
    """Name of the layer Grad-CAM uses by default.

    That is the last layer whose output is 4-D (a batch of feature maps) with a spatial size
    above 1x1; layers that keep a 1x1 map (squeeze-excite pools) are passed over. A model whose
    only 4-D maps are 1x1 gets its last 4-D layer.

    Raises:
        UserError: when no layer after the input has a 4-D output.
    """
    import keras

    candidates = [layer for layer in model.layers
                  if not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4]
    if not candidates:
        raise UserError(f"model '{model.name}' has no layer with 4-D feature maps, so Grad-CAM "
                        "has nothing to weight; use --methods saliency or smoothgrad")
    spatial = [layer for layer in candidates
               if any(d is None or int(d) > 1 for d in layer.output.shape[1:3])]
    return (spatial or candidates)[-1].name


def _get_layer(model, name: str):
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise UserError("--layer: " + did_you_mean(f"layer of model '{model.name}'", name, names))
    layer = model.get_layer(name)
    if _output_rank(layer) != 4:
        raise UserError(f"--layer {name} outputs a tensor of shape {tuple(layer.output.shape)}; "
                        "Grad-CAM needs a layer with 4-D feature maps (batch, height, width, "
                        f"channels), e.g. {find_last_conv_layer(model)}")
    return layer


def _score_tensor(model):
    """The symbolic class-score tensor and its kind: ``"logit"`` or ``"probability"``."""
    import keras

    names = {layer.name for layer in model.layers}
    if "logits" in names:
        return model.get_layer("logits").output, "logit"
    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and \
            getattr(last.activation, "__name__", "") == "softmax":
        return last.input, "logit"
    return model.outputs[0], "probability"


def _single_input(model):
    if len(model.inputs) != 1:
        raise UserError(f"model '{model.name}' has {len(model.inputs)} inputs; explain takes "
                        "models with one image input")
    return model.inputs[0]


class Explainer:
    """Gradient maps for one Keras model (RGB float32 0..255 in, probabilities out).

    Args:
        model: a flat functional Keras 3 model (the ``pixels`` -> ``predictions`` contract).
        layer: Grad-CAM layer name; default :func:`find_last_conv_layer`.

    Example:
        >>> ex = Explainer(model)
        >>> maps = ex.gradcam(images)          # (N, H, W), non-negative
    """

    def __init__(self, model, layer: str | None = None):
        import keras

        self.model = model
        score, self.score_kind = _score_tensor(model)
        self.score_model = keras.Model(_single_input(model), score, name=f"{model.name}_scores")
        self.layer_name = _get_layer(model, layer).name if layer else find_last_conv_layer(model)
        self._cam_model = None

    @property
    def cam_model(self):
        """``(features, head)``: input -> the Grad-CAM layer's maps, and those maps -> score."""
        if self._cam_model is None:
            import keras

            score, _ = _score_tensor(self.model)
            maps = self.model.get_layer(self.layer_name).output
            try:
                head = keras.Model(maps, score, name=f"{self.model.name}_gradcam_head")
            except ValueError:
                raise UserError(
                    f"--layer {self.layer_name} does not separate model '{self.model.name}': the "
                    "class score also depends on earlier layers (a shortcut bypasses it); choose "
                    f"a block output such as {find_last_conv_layer(self.model)}") from None
            features = keras.Model(_single_input(self.model), maps,
                                   name=f"{self.model.name}_gradcam_features")
            self._cam_model = (features, head)
        return self._cam_model

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _prepare(images) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"images must have shape (N, height, width, 3). Received {x.shape}")
        return x

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Class probabilities of the model for float32 0..255 ``images``."""
        x = self._prepare(images)
        return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), np.float32)

    def _classes(self, x: np.ndarray, class_index) -> np.ndarray:
        if class_index is None:
            return self.predict(x).argmax(axis=1).astype(np.int32)
        idx = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(x),)).copy()
        n = int(self.model.outputs[0].shape[-1])
        if idx.min() < 0 or idx.max() >= n:
            raise UserError(f"class index must be in 0..{n - 1}. Received: {idx.tolist()}")
        return idx

    def _score_fn(self, model, classes: np.ndarray):
        """Tensor -> the explained class's score per image (logit, or log-probability)."""
        from keras import ops

        def scores(t):
            picked = ops.take_along_axis(model(t, training=False),
                                         ops.convert_to_tensor(classes[:, None]), axis=1)[:, 0]
            if self.score_kind == "probability":
                picked = ops.log(ops.maximum(picked, 1e-12))
            return picked

        return scores

    def input_gradients(self, images, class_index=None, batch_size: int = 64) -> np.ndarray:
        """``d score / d pixels``: float32 ``(N, H, W, 3)``."""
        x = self._prepare(images)
        classes = self._classes(x, class_index)
        out = [gradient(self._score_fn(self.score_model, classes[i:i + batch_size]),
                        x[i:i + batch_size])
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32)

    # -- the methods ----------------------------------------------------------------------------
    def saliency(self, images, class_index=None) -> np.ndarray:
        """Vanilla-gradient saliency: ``max_c |d score / d x[h, w, c]|``, shape ``(N, H, W)``."""
        return np.abs(self.input_gradients(images, class_index)).max(axis=-1)

    def smoothgrad(self, images, class_index=None, samples: int = DEFAULT_SAMPLES,
                   noise: float = DEFAULT_NOISE, seed: int = 0) -> np.ndarray:
        """SmoothGrad: the mean gradient over noisy copies, reduced like :meth:`saliency`.

        Args:
            images: float32 0..255 images.
            class_index: explained class (default: the prediction on the clean image).
            samples: noisy copies per image.
            noise: noise standard deviation as a fraction of the pixel range (0..255).
            seed: noise seed.
        """
        if isinstance(samples, bool) or int(samples) < 1:
            raise UserError(f"--samples must be a positive integer. Received: {samples}")
        if not 0.0 <= float(noise) <= 1.0:
            raise UserError(f"--noise must be in [0, 1] (a fraction of the pixel range). "
                            f"Received: {noise}")
        x = self._prepare(images)
        classes = self._classes(x, class_index)
        rng = np.random.default_rng(seed)
        total = np.zeros_like(x, dtype=np.float64)
        sigma = float(noise) * PIXEL_RANGE
        for _ in range(int(samples)):
            noisy = (x + rng.normal(0.0, sigma, x.shape)).astype(np.float32)
            total += self.input_gradients(noisy, classes)
        return np.abs(total / int(samples)).max(axis=-1).astype(np.float32)

    def gradcam(self, images, class_index=None, batch_size: int = 64) -> np.ndarray:
        """Grad-CAM at :attr:`layer_name`, upsampled (bilinear) to the input size: ``(N, H, W)``."""
        import keras

        x = self._prepare(images)
        classes = self._classes(x, class_index)
        features_model, head = self.cam_model
        maps = []
        for start in range(0, len(x), batch_size):
            features = np.asarray(features_model.predict_on_batch(x[start:start + batch_size]),
                                  np.float32)
            grads = gradient(self._score_fn(head, classes[start:start + batch_size]), features)
            weights = grads.mean(axis=(1, 2), keepdims=True)
            cam = np.maximum((weights * features).sum(axis=-1, keepdims=True), 0.0)
            cam = keras.ops.image.resize(cam, x.shape[1:3], interpolation="bilinear")
            maps.append(keras.ops.convert_to_numpy(cam)[..., 0])
        return np.concatenate(maps).astype(np.float32)

    def explain(self, images, method: str, class_index=None, **options) -> np.ndarray:
        """One method by name (see :data:`METHODS`); ``options`` go to SmoothGrad."""
        if method not in METHODS:
            raise UserError(did_you_mean("method", method, METHODS))
        if method == "smoothgrad":
            return self.smoothgrad(images, class_index, **options)
        return getattr(self, method)(images, class_index)


def region_mass(maps, mask) -> np.ndarray:
    """Fraction of each map's total mass inside the boolean ``mask`` (H, W): ``(N,)``.

    A map with no mass at all gives NaN, which no threshold passes.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    mask = np.asarray(mask, dtype=bool)
    total = maps.sum(axis=(1, 2))
    inside = (maps * mask).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


# ---------------------------------------------------------------------------------------------
# runs and images


def explainer_for_run(run, layer: str | None = None) -> Explainer:
    """An :class:`Explainer` for a Keras 3 run; Bayesian (tf_keras) runs are refused."""
    if run.is_bayesian:
        raise UserError(f"{run.path} is a Bayesian run; explain takes deterministic runs. "
                        "Explain its deterministic twin (e.g. lenet for bnn_cnn) instead")
    return Explainer(run.model, layer)


def read_images(paths, size: int) -> np.ndarray:
    """Decode image files and resize them (bilinear) to ``size``: float32 (N, size, size, 3)."""
    from kerascls.data.preprocess import ImageReadError, read_image, resize_numpy

    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"image not found: {p}")
        if not path.is_file():
            raise UserError(f"not an image file (it is a folder): {p}")
        try:
            arr = read_image(path)
        except ImageReadError as exc:
            raise UserError(str(exc)) from None
        out.append(resize_numpy(arr[None], size)[0])
    return np.stack(out).astype(np.float32)


def normalize_map(heat) -> np.ndarray:
    """Scale a map to 0..1 by its maximum (an all-zero map stays zero)."""
    heat = np.asarray(heat, dtype=np.float64)
    top = heat.max() if heat.size else 0.0
    return (heat / top if top > 0 else np.zeros_like(heat)).astype(np.float32)


def overlay(image, heat, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped ``heat`` (H, W) over an RGB ``image`` (0..255): uint8 (H, W, 3)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](normalize_map(heat))[..., :3] * 255.0
    img = np.clip(np.asarray(image, dtype=np.float64), 0, 255)
    return np.clip((1 - alpha) * img + alpha * colours, 0, 255).astype(np.uint8)


def _plt():
    from kerascls.plots import pyplot

    return pyplot()


def _save(fig, path: Path) -> Path:
    from kerascls.plots import save_figure

    return save_figure(fig, path)


def _imshow(ax, img, title: str = "") -> None:
    ax.imshow(np.clip(np.asarray(img), 0, 255).astype(np.uint8), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def explanation_figure(image, heat, method: str, title: str, path: Path) -> Path:
    """A PNG with three panels: the input, the map and the overlay."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    _imshow(axes[0], image, "input")
    axes[1].imshow(normalize_map(heat), cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(method, fontsize=8)
    axes[1].axis("off")
    _imshow(axes[2], overlay(image, heat), "overlay")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array, dtype=np.float32))
    return path


def _label(labels: list[str], i: int) -> str:
    return labels[i] if 0 <= i < len(labels) else str(i)


def parse_class(value: str | None, labels: list[str]) -> int | None:
    """``--class``: a label name or an integer index; None for the predicted class."""
    if value is None or value == "":
        return None
    if value in labels:
        return labels.index(value)
    try:
        idx = int(value)
    except ValueError:
        raise UserError("--class: " + did_you_mean("class", value, labels)) from None
    if not 0 <= idx < len(labels):
        raise UserError(f"--class must be a label or an index in 0..{len(labels) - 1}. "
                        f"Received: {value}")
    return idx


def explain_files(run, image_paths, *, methods=METHODS, layer: str | None = None,
                  class_index: int | None = None, out_dir: Path | None = None,
                  samples: int = DEFAULT_SAMPLES, noise: float = DEFAULT_NOISE,
                  seed: int = 0) -> list[dict]:
    """Explain image files with a run's model; write overlay PNGs and raw ``.npy`` maps.

    Each image gets ``<stem>.<method>.png`` and ``<stem>.<method>.npy`` beside it (or in
    ``out_dir``).

    Returns:
        One record per image: path, predicted label and probability, explained label, and the
        paths written per method.
    """
    methods = tuple(methods)
    x = read_images(image_paths, run.image_size)
    ex = explainer_for_run(run, layer)
    probs = run.predict_proba(x)
    pred = probs.argmax(axis=1)
    target = pred if class_index is None else np.full(len(x), class_index)
    labels = run.labels
    maps = {m: ex.explain(x, m, target, **({"samples": samples, "noise": noise, "seed": seed}
                                          if m == "smoothgrad" else {}))
            for m in methods}
    records = []
    for i, p in enumerate(image_paths):
        src = Path(p)
        where = Path(out_dir) if out_dir else src.parent
        rec = {"image": str(src), "predicted": _label(labels, int(pred[i])),
               "probability": float(probs[i, pred[i]]),
               "explained_class": _label(labels, int(target[i])), "outputs": {}}
        for m in methods:
            title = (f"{src.name}: predicted {rec['predicted']} (p={rec['probability']:.2f}); "
                     f"{m} of class {rec['explained_class']}")
            if m == "gradcam":
                title += f" at {ex.layer_name}"
            png = explanation_figure(x[i], maps[m][i], m, title, where / f"{src.stem}.{m}.png")
            npy = _save_npy(where / f"{src.stem}.{m}.npy", maps[m][i])
            rec["outputs"][m] = {"png": str(png), "npy": str(npy)}
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------
# galleries


def select_examples(y_true, probs, k: int) -> dict[str, np.ndarray]:
    """Indices of the test images each gallery shows.

    * ``correct``: the correct predictions made with the highest confidence, one class after
      another (the most confident of each class first, then the second most confident...), so
      that the ``k`` images show as many classes as they can;
    * ``wrong``: the ``k`` worst errors, i.e. misclassified images with the lowest probability
      on their true class;
    * ``uncertain``: the ``k`` images with the highest predictive entropy.
    """
    from kerascls.uncertainty import entropy

    if isinstance(k, bool) or int(k) < 1:
        raise UserError(f"--misclassified must be a positive integer. Received: {k}")
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=1)
    conf = p.max(axis=1)
    p_true = p[np.arange(len(y)), y]
    correct = np.flatnonzero(pred == y)
    wrong = np.flatnonzero(pred != y)
    by_conf = correct[np.argsort(-conf[correct], kind="stable")]
    rank = np.zeros(len(by_conf), np.int64)
    seen: dict[int, int] = {}
    for j, i in enumerate(by_conf):
        rank[j] = seen.get(int(y[i]), 0)
        seen[int(y[i])] = rank[j] + 1
    return {
        "correct": by_conf[np.argsort(rank, kind="stable")][:k],
        "wrong": wrong[np.argsort(p_true[wrong], kind="stable")][:k],
        "uncertain": np.argsort(-entropy(p), kind="stable")[:k],
    }


def gallery_figure(images, maps: dict[str, np.ndarray], titles: list[str], path: Path,
                   title: str = "") -> Path:
    """Rows of images: the input, then one overlay per method."""
    plt = _plt()
    methods = list(maps)
    n = max(1, len(images))
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(1.9 * (1 + len(methods)), 2.3 * n),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center")
    for r, img in enumerate(images):
        _imshow(axes[r, 0], img, titles[r])
        for c, m in enumerate(methods, start=1):
            _imshow(axes[r, c], overlay(img, maps[m][r]), m if r == 0 else "")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def gallery(run, k: int, *, kinds=("wrong", "uncertain"), methods=("saliency", "gradcam"),
            layer: str | None = None, out_dir: Path | None = None, splits=None,
            samples: int = DEFAULT_SAMPLES, noise: float = DEFAULT_NOISE) -> dict:
    """Galleries of test images with their maps: ``<kind>.png`` per kind, plus ``gallery.json``.

    Args:
        run: a :class:`kerascls.runs.Run` (Keras 3).
        k: images per gallery.
        kinds: any of :data:`GALLERY_KINDS`.
        methods: any of :data:`METHODS`.
        layer: Grad-CAM layer (default: the last convolutional one).
        out_dir: where to write (default ``RUN_DIR/explain``).
        splits: the run's splits if already loaded (default: recreated from its config).

    Returns:
        The content of ``gallery.json``: per kind the test indices, true and predicted labels,
        probabilities, entropies and the written files.
    """
    from kerascls.uncertainty import entropy

    for kind in kinds:
        if kind not in GALLERY_KINDS:
            raise UserError(did_you_mean("gallery", kind, GALLERY_KINDS))
    methods = tuple(methods)
    ex = explainer_for_run(run, layer)
    splits = splits if splits is not None else run.dataset()
    x, y = splits.x_test, splits.y_test
    probs = run.predict_proba(x)
    chosen = select_examples(y, probs, k)
    out = Path(out_dir) if out_dir else Path(run.path) / "explain"
    labels = run.labels
    ent = entropy(probs)
    report = {"run": str(run.path), "split": "test", "k": int(k), "methods": list(methods),
              "gradcam_layer": ex.layer_name, "galleries": {}}
    for kind in kinds:
        idx = chosen[kind]
        xs = x[idx]
        pred = probs[idx].argmax(axis=1) if len(idx) else np.zeros(0, np.int64)
        maps = {m: (ex.explain(xs, m, pred, **({"samples": samples, "noise": noise}
                                               if m == "smoothgrad" else {}))
                    if len(idx) else np.zeros((0, *x.shape[1:3]), np.float32))
                for m in methods}
        titles = [f"#{int(i)} true {_label(labels, int(y[i]))}\npred {_label(labels, int(p))} "
                  f"({probs[i, p]:.2f})" for i, p in zip(idx, pred)]
        heading = {"correct": f"{len(idx)} most confident correct predictions",
                   "wrong": f"{len(idx)} worst errors (lowest probability on the true class)",
                   "uncertain": f"{len(idx)} most uncertain predictions (highest entropy)"}[kind]
        png = gallery_figure(xs, maps, titles, out / f"{kind}.png", f"{run.name}: {heading}")
        files = {"png": str(png)}
        for m in methods:
            files[m] = str(_save_npy(out / f"{kind}.{m}.npy", maps[m]))
        report["galleries"][kind] = {
            "indices": [int(i) for i in idx],
            "true": [_label(labels, int(y[i])) for i in idx],
            "predicted": [_label(labels, int(p)) for p in pred],
            "probability": [float(probs[i, p]) for i, p in zip(idx, pred)],
            "probability_true": [float(probs[i, y[i]]) for i in idx],
            "entropy": [float(ent[i]) for i in idx],
            "files": files,
        }
    atomic_write_json(out / "gallery.json", report)
    return report


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser():
    from kerascls.cli import Parser

    p = Parser(prog="python -m kerascls.explain", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory written by python -m kerascls.train")
    p.add_argument("images", nargs="*", help="image files to explain (jpg, png, bmp, gif)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: all)")
    p.add_argument("--layer", help="Grad-CAM layer name (default: the last convolutional layer)")
    p.add_argument("--class", dest="class_", metavar="LABEL",
                   help="explain this class (label or index) instead of the predicted one")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="SmoothGrad: noisy copies")
    p.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                   help="SmoothGrad: noise standard deviation as a fraction of 0..255")
    p.add_argument("--misclassified", type=int, metavar="K",
                   help="also write galleries of the K worst test errors and K most uncertain "
                        "test images into RUN_DIR/explain")
    p.add_argument("--out", help="write the image outputs here instead of next to each image")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    from kerascls.runs import load_run

    args = build_parser().parse_args(argv)
    methods = parse_methods(args.methods)
    if args.misclassified is not None and args.misclassified < 1:
        raise UserError(f"--misclassified must be a positive integer. "
                        f"Received: {args.misclassified}")
    if not args.images and args.misclassified is None:
        raise UserError("give at least one IMAGE to explain, or --misclassified K")
    for p in args.images:
        if not Path(p).exists():
            raise UserError(f"image not found: {p}")
    run = load_run(args.run_dir)
    if run.is_bayesian:
        explainer_for_run(run)
    if args.layer:
        _get_layer(run.model, args.layer)
    class_index = parse_class(args.class_, run.labels)
    if args.images:
        records = explain_files(run, args.images, methods=methods, layer=args.layer,
                                class_index=class_index,
                                out_dir=Path(args.out) if args.out else None,
                                samples=args.samples, noise=args.noise)
        for rec in records:
            outs = ", ".join(Path(o["png"]).name for o in rec["outputs"].values())
            print(f"{rec['image']}: predicted {rec['predicted']} (p={rec['probability']:.3f}); "
                  f"wrote {outs} and .npy maps")
    if args.misclassified is not None:
        report = gallery(run, args.misclassified, methods=methods, layer=args.layer,
                         samples=args.samples, noise=args.noise)
        for kind, g in report["galleries"].items():
            print(f"{kind}: {len(g['indices'])} test images -> {g['files']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
