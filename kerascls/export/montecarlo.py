"""Bayesian models in the artifacts: Monte Carlo summaries in the graph, posterior ensembles in
TFLite.

Shared by both engines that hold Bayesian models (``tfp`` and ``keras``):

* :func:`mc_summary_tensors`: the TensorFlow twin of :class:`kerascls.uncertainty.MCPrediction`,
  used by the SavedModel's Monte Carlo signature (``entropy``, ``mutual_information``);
* :func:`export_ensemble`: a ``K``-member posterior-sample ensemble in one ``.tflite`` file.
  Flipout's random ops do not convert to TFLite builtins (``RandomUniformInt`` and the stateless
  random ops are not builtins), so the file holds ``K`` deterministic networks whose weights are
  posterior draws, and outputs their mean (``probabilities``), their per-class spread (``std``)
  and each member's probabilities (``member_probabilities``). Each engine supplies the ensemble
  as a callable from float32 0..255 pixels to ``(batch, K, classes)`` probabilities.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.fileio import atomic_path, atomic_write_json

ENSEMBLE_MEMBERS = 10
ENSEMBLE_SEED = 0
TFLITE_VARIANTS = ("float32", "dynamic", "float16", "int8")
ENSEMBLE_OUTPUTS = {
    "probabilities": "mean of the members' probabilities (batch, classes)",
    "std": "per-class standard deviation over the members (batch, classes)",
    "member_probabilities": "each member's probabilities (batch, members, classes)",
}
_EPS = 1e-12


def mc_summary_tensors(mc) -> dict:
    """Mean, per-class std, predictive entropy and mutual information of ``(n, B, C)`` samples.

    The TensorFlow twin of :class:`kerascls.uncertainty.MCPrediction` (entropies in nats).
    """
    import tensorflow as tf

    def entropy(p):
        return -tf.reduce_sum(p * tf.math.log(tf.clip_by_value(p, _EPS, 1.0)), axis=-1)

    mean = tf.reduce_mean(mc, axis=0)
    total = entropy(mean)
    expected = tf.reduce_mean(entropy(mc), axis=0)
    std = tf.sqrt(tf.reduce_mean(tf.square(mc - mean[None]), axis=0))
    return {"probabilities": mean, "std": std, "entropy": total,
            "mutual_information": tf.maximum(total - expected, 0.0)}


def _input_shape(ensemble) -> tuple[int, int, int]:
    return tuple(int(v) for v in tuple(ensemble.input_shape)[-3:])


def ensemble_module(ensemble):
    """A ``tf.Module`` whose ``serve`` function gives the mean, spread and member probabilities.

    Args:
        ensemble: a callable from float32 0..255 pixels ``(B, H, W, C)`` to the members'
            probabilities ``(B, K, classes)``, with an ``input_shape`` attribute.
    """
    import tensorflow as tf

    module = tf.Module()
    module.ensemble = ensemble

    @tf.function(input_signature=[tf.TensorSpec([None, *_input_shape(ensemble)], tf.float32,
                                                name="pixels")])
    def serve(pixels):
        members = tf.cast(ensemble(pixels), tf.float32)  # (B, K, C)
        mean = tf.reduce_mean(members, axis=1)
        std = tf.sqrt(tf.reduce_mean(tf.square(members - mean[:, None]), axis=1))
        return {"probabilities": mean, "std": std, "member_probabilities": members}

    module.serve = serve
    return module


def _save_for_conversion(module, directory: str) -> None:
    """Write ``module.serve`` as a SavedModel signature ``serving_default``.

    A Keras 3 ensemble goes through Keras' own exporter, which tracks Keras variables so that
    the converter can freeze them; an ensemble of plain TensorFlow ops with constant weights
    (the ``tfp`` engine's) is saved as the module it is.
    """
    import keras
    import tensorflow as tf

    if isinstance(module.ensemble, keras.Model):
        archive = keras.export.ExportArchive()
        archive.track(module.ensemble)
        archive.add_endpoint("serving_default", module.serve)
        archive.write_out(directory, verbose=False)
    else:
        tf.saved_model.save(module, directory, signatures={
            "serving_default": module.serve.get_concrete_function()})


def convert_ensemble(module, variant: str, representative: np.ndarray | None = None) -> bytes:
    """Convert :func:`ensemble_module` to TFLite bytes with builtin ops only.

    ``int8`` is full-integer like the deterministic models' int8 files (uint8 pixels in with
    scale 1, uint8 outputs) and needs ``representative`` training images.
    """
    import tensorflow as tf

    from kerascls.export.tflite import pin_input_quantization

    if variant == "int8" and representative is None:
        raise UserError("the int8 ensemble needs representative images")
    # Through a SavedModel, as the deterministic models go: its variables are frozen into
    # constants, so the file holds builtin ops only (no READ_VARIABLE).
    with tempfile.TemporaryDirectory(prefix="kerascls-ensemble-") as tmp:
        _save_for_conversion(module, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if variant == "int8":
            converter.representative_dataset = lambda: ([im[None].astype(np.float32)]
                                                         for im in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        content = converter.convert()
    return pin_input_quantization(content) if variant == "int8" else content


def output_entries(content: bytes) -> list[dict]:
    """The sidecar ``outputs`` list: tensor name, index, shape and role of each output."""
    from kerascls.export.tflite import tensor_entry, interpreter

    it = interpreter(model_content=content)
    position = {d["index"]: i for i, d in enumerate(it.get_output_details())}
    details = {d["index"]: d for d in it.get_output_details()}
    signature = it.get_signature_runner("serving_default").get_output_details()
    entries = []
    for role, detail in signature.items():
        entry = tensor_entry(details[detail["index"]])
        entry.update(index=position[detail["index"]], role=role, meaning=ENSEMBLE_OUTPUTS[role])
        entries.append(entry)
    return sorted(entries, key=lambda e: e["index"])


def ensemble_predict(content_or_path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a TFLite ensemble on float32 0..255 images (through
    :func:`kerascls.export.tflite.run_tflite`).

    Returns ``{"probabilities": (N, C), "std": (N, C), "member_probabilities": (N, K, C)}``.
    """
    from kerascls.export.tflite import run_tflite

    return run_tflite(content_or_path, x, outputs=tuple(ENSEMBLE_OUTPUTS))


def export_ensemble(run, out_dir: Path, variant: str, ensemble, *, members: int, seed: int,
                    representative_size: int | None = None, **options) -> list[Path]:
    """Write a Bayesian run's ``K``-member posterior ensemble as ``.tflite`` plus sidecar.

    Files: ``out_dir/<model_name>-<variant>.tflite`` and its ``.json`` sidecar (the
    deterministic models' keys plus ``ensemble_members``, ``ensemble_seed`` and an ``outputs``
    list giving the role of each output).

    Args:
        run: a Bayesian :class:`kerascls.runs.Run`.
        out_dir: where the files go (``RUN_DIR/tflite``).
        variant: ``tflite-float32``, ``tflite-dynamic``, ``tflite-float16`` or ``tflite-int8``.
        ensemble: the engine's ensemble (see :func:`ensemble_module`).
        members: ensemble size ``K``.
        seed: seed of the posterior draws.
        representative_size: ``tflite-int8``: class-stratified training images that calibrate
            the quantization (see :func:`kerascls.export.tflite.representative_sample`).
        **options: further format options; none is accepted.

    Returns:
        ``[tflite_file, sidecar]``.
    """
    import tensorflow as tf

    from kerascls.export.tflite import (
        DEFAULT_REPRESENTATIVE_SIZE,
        build_sidecar,
        representative_sample,
        sidecar_path,
        tflite_path,
    )

    kind = variant.removeprefix("tflite-")
    if kind not in TFLITE_VARIANTS:
        allowed = ", ".join(f"tflite-{v}" for v in TFLITE_VARIANTS)
        raise UserError(f"{variant} is not available for the Bayesian model {run.name}; its "
                        f"posterior-sample ensemble exports as {allowed}")
    if options or (representative_size is not None and kind != "int8"):
        bad = sorted(options) + (["representative_size"] if representative_size is not None
                                 and kind != "int8" else [])
        raise UserError(f"{variant} of a Bayesian run takes no option {', '.join(bad)}")
    module = ensemble_module(ensemble)
    extra: dict = {"ensemble_members": int(members), "ensemble_seed": int(seed)}
    representative = None
    if kind == "int8":
        splits = run.dataset()
        size = DEFAULT_REPRESENTATIVE_SIZE if representative_size is None else representative_size
        representative, _ = representative_sample(splits.x_train, splits.y_train, size)
    print(f"converting {run.name} to a {members}-member posterior ensemble ({variant}) ...",
          flush=True)
    content = convert_ensemble(module, kind, representative)
    if representative is not None:
        reference = module.serve(tf.constant(representative))["probabilities"].numpy()
        got = ensemble_predict(content, representative)["probabilities"]
        extra["representative"] = {
            "images": int(len(representative)), "source": "training split, class-stratified",
            "agreement_with_float_ensemble": float((got.argmax(1) == reference.argmax(1)).mean()),
        }
    path = tflite_path(run, Path(out_dir), kind)
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    extra["outputs"] = output_entries(content)
    atomic_write_json(sidecar_path(path), build_sidecar(run, path, kind, extra))
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB) and {sidecar_path(path).name}",
          flush=True)
    return [path, sidecar_path(path)]
