"""kerascls.explain: where saliency and Grad-CAM put their mass, the CLI, and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerascls.errors import UserError


def _fit(model, x, y, epochs: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(keras.optimizers.Adam(0.002), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _pad(x, p: int):
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def test_saliency_falls_on_the_sentiment_image_not_on_zero_padding():
    """The lab's seed CNN on 8x8 sentiment images set in a 16x16 canvas of zeros.

    Vanilla-gradient saliency must be denser on the image than on the padding for every test
    image, and training must move mass onto the image: an untrained model spreads it by area
    (about 25% on the image), the trained one puts clearly more there.
    """
    import keras

    from kerascls import build_model, load_dataset
    from kerascls.explain import Explainer, region_mass

    s = load_dataset("sentiment", 8, seed=0)
    x_train, x_test = _pad(s.x_train, 4), _pad(s.x_test, 4)
    image = np.zeros((16, 16), bool)
    image[4:12, 4:12] = True
    area = image.mean()

    keras.utils.set_random_seed(0)
    model = build_model("seed_cnn", (16, 16, 3), 2, normalize="unit")
    before = region_mass(Explainer(model).saliency(x_test), image)
    _fit(model, x_train, s.y_train, epochs=15)
    assert model.evaluate(x_test, s.y_test, verbose=0)[1] == 1.0
    after = region_mass(Explainer(model).saliency(x_test), image)

    assert not np.isnan(after).any()
    # density on the image above density on the padding, for every image
    assert after.min() > area
    assert after.mean() > 1.3 * area
    assert after.mean() > before.mean() + 0.05


def _left_half_data(n: int, size: int = 32, seed: int = 0):
    """Class 0: horizontal stripes on the left half; class 1: vertical. Right half: noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.zeros((n, size, size, 3), np.float32)
    half = size // 2
    ii = np.arange(size)
    for i in range(n):
        period = int(rng.integers(3, 6))
        stripes = ((ii + int(rng.integers(0, period))) // max(1, period // 2)) % 2
        pattern = (np.tile(stripes[:, None], (1, half)) if y[i] == 0
                   else np.tile(stripes[None, :half], (size, 1)))
        x[i, :, :half] = (60 + 150 * pattern)[..., None]
        x[i, :, half:] = rng.uniform(0, 255, (size, half, 1))
    return x, y


def test_gradcam_puts_its_mass_on_the_half_that_decides_the_class():
    from kerascls import build_model
    from kerascls.explain import Explainer, region_mass

    x_train, y_train = _left_half_data(400, seed=0)
    x_test, y_test = _left_half_data(80, seed=1)
    model = _fit(build_model("seed_cnn", (32, 32, 3), 2, normalize="unit"), x_train, y_train, 6)
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.95
    ex = Explainer(model)
    assert ex.layer_name == "pool1"
    maps = ex.gradcam(x_test)
    assert maps.shape == (80, 32, 32) and (maps >= 0).all()
    left = np.zeros((32, 32), bool)
    left[:, :16] = True
    mass = region_mass(maps, left)
    assert np.nanmean(mass) > 0.7
    # the top and bottom halves share the mass: the map is not transposed
    top = np.zeros((32, 32), bool)
    top[:16] = True
    assert 0.3 < np.nanmean(region_mass(maps, top)) < 0.7


def test_last_conv_layer_is_found_in_classic_and_zoo_models():
    from kerascls import build_model
    from kerascls.explain import Explainer, find_last_conv_layer

    assert find_last_conv_layer(build_model("lenet", (32, 32, 3), 10)) == "pool2"
    assert find_last_conv_layer(build_model("small_cnn", (64, 64, 3), 10)) == "conv5"
    resnet = build_model("resnet20", (32, 32, 3), 10)
    name = find_last_conv_layer(resnet)
    assert len(resnet.get_layer(name).output.shape) == 4
    assert all(len(layer.output.shape) != 4 for layer in
               resnet.layers[[la.name for la in resnet.layers].index(name) + 1:])
    with pytest.raises(UserError, match="--layer: unknown layer"):
        Explainer(resnet, layer="conv_nope")
    with pytest.raises(UserError, match="4-D feature maps"):
        Explainer(resnet, layer="predictions")


def test_smoothgrad_and_saliency_shapes_and_explained_class():
    from kerascls import build_model
    from kerascls.explain import Explainer

    model = build_model("seed_cnn", (8, 8, 3), 3, normalize="unit")
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    ex = Explainer(model)
    sal = ex.saliency(x, class_index=2)
    smooth = ex.smoothgrad(x, class_index=2, samples=3)
    assert sal.shape == smooth.shape == (4, 8, 8)
    assert (sal >= 0).all() and sal.max() > 0
    # a different class gives a different gradient
    assert not np.allclose(sal, ex.saliency(x, class_index=0))
    with pytest.raises(UserError, match="class index"):
        ex.saliency(x, class_index=3)
    with pytest.raises(UserError, match="--samples"):
        ex.smoothgrad(x, samples=0)


def test_select_examples_picks_worst_errors_and_most_uncertain():
    from kerascls.explain import select_examples

    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.05, 0.95], [0.55, 0.45], [0.99, 0.01]])
    chosen = select_examples(y, probs, 2)
    assert chosen["wrong"].tolist() == [4, 1]          # lowest probability on the true class
    assert chosen["uncertain"].tolist() == [3, 1]      # highest entropy
    assert chosen["correct"].tolist() == [2, 0]        # most confident correct
    # one class after another: the best 1 (0.99) comes before the second-best 0 (0.998)
    y = np.array([0, 0, 1])
    probs = np.array([[0.999, 0.001], [0.998, 0.002], [0.01, 0.99]])
    assert select_examples(y, probs, 3)["correct"].tolist() == [0, 2, 1]
    with pytest.raises(UserError):
        select_examples(y, probs, 0)


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)


def test_cli_writes_overlays_maps_and_galleries(sentiment_run, tmp_path, capsys):
    from kerascls.explain import main
    from kerascls.runs import load_run

    splits = load_run(sentiment_run).dataset()
    bright = splits.x_test[splits.y_test == 1][0]
    img = tmp_path / "bright.png"
    _write_png(img, bright)
    assert main([str(sentiment_run), str(img), "--samples", "4", "--misclassified", "3"]) == 0
    out = capsys.readouterr().out
    assert "predicted positive" in out
    for method in ("saliency", "smoothgrad", "gradcam"):
        assert (tmp_path / f"bright.{method}.png").stat().st_size > 0
        heat = np.load(tmp_path / f"bright.{method}.npy")
        assert heat.shape == (8, 8) and heat.dtype == np.float32 and (heat >= 0).all()
    report = json.loads((sentiment_run / "explain" / "gallery.json").read_text())
    assert set(report["galleries"]) == {"wrong", "uncertain"}
    uncertain = report["galleries"]["uncertain"]
    assert len(uncertain["indices"]) == 3
    assert np.load(uncertain["files"]["gradcam"]).shape == (3, 8, 8)
    assert (sentiment_run / "explain" / "uncertain.png").is_file()
    assert (sentiment_run / "explain" / "wrong.png").is_file()


def _one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err, err


def test_cli_bad_input_gives_one_line_errors(sentiment_run, tmp_path, capsys):
    from kerascls.explain import main

    img = tmp_path / "x.png"
    _write_png(img, np.full((8, 8, 3), 200.0))
    _one_line_error(capsys, main([str(sentiment_run), str(tmp_path / "missing.png")]),
                    "image not found")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "metadata.json").write_text(json.dumps({"model_name": "lenet", "labels": ["a"]}))
    _one_line_error(capsys, main([str(empty), str(img)]), "has no model")
    _one_line_error(capsys, main([str(tmp_path / "nope"), str(img)]), "run directory not found")
    _one_line_error(capsys, main([str(sentiment_run), str(img), "--methods", "gradcam,lime"]),
                    "unknown method 'lime'")
    _one_line_error(capsys, main([str(sentiment_run), str(img), "--layer", "dense9"]),
                    "unknown layer")
    _one_line_error(capsys, main([str(sentiment_run), str(img), "--class", "happy"]),
                    "unknown class 'happy'")
    _one_line_error(capsys, main([str(sentiment_run)]), "at least one IMAGE")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    _one_line_error(capsys, main([str(sentiment_run), str(bad)]), "not a readable image")


def test_gradcam_layer_bypassed_by_a_shortcut_is_refused():
    """Grad-CAM splits the model at its layer; a layer inside a residual block cannot split it."""
    from kerascls import build_model
    from kerascls.explain import Explainer

    resnet = build_model("resnet20", (32, 32, 3), 10)
    inside = next(la.name for la in resnet.layers if la.name.endswith("_1_conv"))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    with pytest.raises(UserError, match=f"--layer {inside} does not separate"):
        Explainer(resnet, layer=inside).gradcam(x)
    assert Explainer(resnet).gradcam(x).shape == (2, 32, 32)
