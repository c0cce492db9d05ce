"""Typed configuration: the dataclass field defaults are the only defaults.

``--config file.yaml`` overrides the defaults, command-line flags override the file, and the
resolved configuration is written to the run directory as ``config.yaml``. Flags are generated
from the fields (``image_size`` -> ``--image-size``) and grouped by dataclass. Values are parsed
by the field's type; user input is never evaluated.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from kerascls.choices import BNN_IMPLS, DEVICES, LR_SCALING, MIXED_PRECISION, STRATEGIES
from kerascls.cli import Parser, metavar_for
from kerascls.errors import UserError


def _field(default, help: str, choices=None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta, **kw)


# Mapping fields and their repeatable KEY=VALUE flag.
MAPPING_FLAGS = {"args": "--model-arg"}

AUGMENTATIONS = ("crop", "flip", "jitter", "rotation", "zoom", "mixup", "cutmix")


@dataclasses.dataclass
class DataConfig:
    dataset: str = _field("digits", "sentiment | digits | fashion_mnist | mnist_sample | "
                          "folder:PATH | tfds:NAME")
    data_dir: str = _field("", "TensorFlow Datasets data directory (tfds:NAME); the folder "
                           "searched first for the fashion_mnist and mnist_sample files")
    image_size: int = _field(0, "square input size in pixels; 0 picks the model's default")
    normalize: str = _field("unit", "normalization inside the model", ("imagenet", "unit", "none"))
    augment: str = _field("", f"comma-separated augmentations: {', '.join(AUGMENTATIONS)}")
    val_fraction: float = _field(0.15, "validation fraction when the source has no split")
    test_fraction: float = _field(0.2, "test fraction when the source has no split")
    max_train_examples: int = _field(0, "train on a stratified subset of at most N training "
                                     "images (validation and test unchanged); 0 uses them all")
    class_weight: str = _field("none", "class weighting in the loss", ("none", "balanced"))
    num_examples: int = _field(400, "sentiment: number of images")
    sentiment_size: int = _field(8, "sentiment: native image size")
    noise: float = _field(0.05, "sentiment: per-pixel noise standard deviation (0..1 scale)")
    imbalance: float = _field(1.0, "sentiment: ratio of negative to positive images")


@dataclasses.dataclass
class ModelConfig:
    model: str = _field("lenet", "registered model name (python -m kerascls.models list)")
    dropout: float = _field(0.0, "dropout before the classifier")
    pretrained: str = _field("", "ImageNet weights file compatible with keras.applications")
    freeze_backbone: bool = _field(False, "train the head first, then fine-tune everything")
    bn_momentum: float = _field(0.9, "momentum of every batch-norm layer's moving statistics "
                                "(0.9 tracks the weights within an epoch on small datasets; the "
                                "architectures' own 0.99/0.999 suit long ImageNet schedules); 0 "
                                "keeps each architecture's own")
    prior_scale: float = _field(1.0, "Bayesian models: sigma of the N(0, sigma^2) weight prior")
    bnn_impl: str = _field("auto", "Bayesian models: tfp (TensorFlow Probability's Flipout "
                           "layers, tensorflow backend) or keras (kerascls' Keras 3 Flipout "
                           "layers, any backend); auto picks tfp on tensorflow, keras elsewhere",
                           BNN_IMPLS)
    bnn_trunk: str = _field("flipout", "bnn_cnn: Flipout or deterministic convolutions under "
                            "the Flipout head", ("flipout", "deterministic"))
    args: dict = _field({}, "builder arguments of the model, e.g. depth: 32 (YAML model.args; "
                        "flag --model-arg KEY=VALUE, repeatable); checked against the builder "
                        "and written back resolved")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = _field(30, "training epochs")
    batch_size: int = _field(64, "global batch size")
    optimizer: str = _field("adam", "optimizer", ("adam", "adamw", "sgd"))
    learning_rate: float = _field(0.002, "peak learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(0.0, "decoupled weight decay (adamw, sgd)")
    schedule: str = _field("cosine", "learning-rate schedule", ("constant", "cosine", "step"))
    warmup_epochs: int = _field(0, "linear warmup epochs")
    step_epochs: int = _field(10, "step schedule: epochs between decays")
    step_gamma: float = _field(0.1, "step schedule: decay factor")
    label_smoothing: float = _field(0.0, "label smoothing")
    early_stopping: int = _field(0, "patience in epochs on val_loss; 0 disables")
    bn_recalibration: int = _field(
        50, "re-estimate batch-norm statistics over up to N batches of training images at each "
        "epoch end before validating (when an epoch is too short for the moving averages to "
        "follow the weights), and once more on the saved model (kept when validation loss does "
        "not get worse); 0 disables")
    seed: int = _field(42, "random seed for data splits, initialization and shuffling")
    output_dir: str = _field("runs", "parent directory of run directories")
    run_name: str = _field("", "run directory name; default <model>-<dataset>")
    verbose: int = _field(1, "Keras progress output: 0 silent, 1 bar (one line per epoch when "
                          "the output is not a terminal), 2 one line per epoch", (0, 1, 2))
    strategy: str = _field("none", "distribution: none (one device); mirrored, multiworker "
                           "(tensorflow backend, multiworker reads TF_CONFIG); data-parallel "
                           "(jax backend)", STRATEGIES)
    cpu_devices: int = _field(0, "split the CPU into N logical devices for --strategy mirrored or "
                              "data-parallel; 0 keeps it whole")
    device: str = _field("auto", "device kind: auto (a GPU when there is one), cpu, gpu", DEVICES)
    mixed_precision: str = _field("off", "mixed-precision training policy; model.keras and the "
                                  "exports stay float32", MIXED_PRECISION)
    lr_scaling: str = _field("linear", "learning-rate rule for the global batch: x batch-size / "
                             "lr-base-batch (linear), x its square root (sqrt), or none",
                             LR_SCALING)
    lr_base_batch: int = _field(64, "the global batch size --learning-rate is tuned for")


@dataclasses.dataclass
class EvalConfig:
    tta: int = _field(0, "test-time augmentation passes (0 = off)")
    mc_samples: int = _field(30, "Monte Carlo samples for Bayesian / MC-dropout prediction")


@dataclasses.dataclass
class ExportConfig:
    formats: str = _field("saved_model,tflite-float32,tflite-int8",
                          "comma-separated export formats from saved_model, tflite-float32, "
                          "tflite-dynamic, tflite-float16, tflite-int8; empty to skip")
    models_dir: str = _field("", "base directory for SavedModel versions; default RUN_DIR/models")
    representative_size: int = _field(300, "int8: class-stratified representative images")
    ensemble_members: int = _field(10, "Bayesian runs: posterior samples in each TFLite "
                                   "ensemble")


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from kerascls.fileio import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        cfg = cls()
        apply_mapping(cfg, data or {}, source)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(read_yaml(path), str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _sections(cfg) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _field_types(section) -> dict[str, type]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def parse_value(typ: type, raw: Any, where: str):
    """Parse ``raw`` as ``typ`` (bool, int, float, str); raise UserError naming ``where``."""
    if typ is dict:
        if isinstance(raw, (list, tuple)) and where.startswith("--"):  # repeated --model-arg
            from kerascls.registry import parse_model_arg_pairs

            return parse_model_arg_pairs(raw, where)
        if not isinstance(raw, dict):
            raise UserError(f"{where} must be a mapping of KEY: VALUE. Received: {raw!r}")
        return {str(k): v for k, v in raw.items()}
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {typ.__name__}. Received: {raw!r}") from None


def apply_mapping(cfg: Config, data: dict[str, Any], source: str) -> None:
    sections = _sections(cfg)
    for sec_name, values in data.items():
        if sec_name not in sections:
            close = difflib.get_close_matches(str(sec_name), sections, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{source}: unknown section '{sec_name}'.{hint} "
                            f"Sections: {', '.join(sections)}")
        section = sections[sec_name]
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{sec_name}' must be a mapping")
        types = _field_types(section)
        for key, raw in values.items():
            if key not in types:
                close = difflib.get_close_matches(str(key), types, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise UserError(f"{source}: unknown key '{sec_name}.{key}'.{hint}")
            setattr(section, key, parse_value(types[key], raw, f"{sec_name}.{key}"))


def make_parser(prog: str, description: str, sections=("data", "model", "train", "eval",
                                                          "export")) -> argparse.ArgumentParser:
    """A parser with ``--config`` and one flag group per config section."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with sections " + ", ".join(sections))
    defaults = Config()
    for sec_name in sections:
        section = getattr(defaults, sec_name)
        group = parser.add_argument_group(sec_name)
        types = _field_types(section)
        for f in dataclasses.fields(section):
            if f.name in MAPPING_FLAGS:
                group.add_argument(MAPPING_FLAGS[f.name], dest=f"{sec_name}.{f.name}",
                                   action="append", default=None, metavar="KEY=VALUE",
                                   help=f.metadata.get("help", ""))
                continue
            flag = "--" + f.name.replace("_", "-")
            helptext = f.metadata.get("help", "")
            helptext += f" (default: {getattr(section, f.name)!r})"
            choices = f.metadata.get("choices")
            if types[f.name] is bool:
                kw = {"nargs": "?", "const": "true", "metavar": "BOOL"}
            elif choices:
                kw = {"metavar": "{" + ",".join(map(str, choices)) + "}"}
            else:
                kw = {"metavar": metavar_for(f.name, types[f.name])}
            group.add_argument(flag, dest=f"{sec_name}.{f.name}", default=None, help=helptext,
                               **kw)
    return parser


def resolve(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Defaults, then ``--config``, then flags; validate choices."""
    cfg = base or Config()
    if getattr(args, "config", None):
        apply_mapping(cfg, read_yaml(args.config), args.config)
    overrides: dict[str, dict[str, Any]] = {}
    for dest, raw in vars(args).items():
        if "." in dest and raw is not None:
            sec, key = dest.split(".", 1)
            overrides.setdefault(sec, {})[key] = raw
    for sec, values in overrides.items():
        section = getattr(cfg, sec)
        types = _field_types(section)
        for key, raw in values.items():
            if key in MAPPING_FLAGS:  # flags add to (and override keys of) the file's mapping
                getattr(section, key).update(parse_value(types[key], raw, MAPPING_FLAGS[key]))
                continue
            setattr(section, key, parse_value(types[key], raw, "--" + key.replace("_", "-")))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for sec_name, section in _sections(cfg).items():
        for f in dataclasses.fields(section):
            choices = f.metadata.get("choices")
            value = getattr(section, f.name)
            if choices and value not in choices:
                raise UserError(f"--{f.name.replace('_', '-')} must be one of "
                                f"{', '.join(map(str, choices))}. Received: {value}")
    t, d = cfg.train, cfg.data
    if t.epochs <= 0:
        raise UserError(f"--epochs must be a positive integer. Received: {t.epochs}")
    if t.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer. Received: {t.batch_size}")
    if t.learning_rate <= 0:
        raise UserError(f"--learning-rate must be positive. Received: {t.learning_rate}")
    if d.image_size < 0:
        raise UserError(f"--image-size must be positive (or 0 for the model default). "
                        f"Received: {d.image_size}")
    if not 0 <= t.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1). Received: {t.label_smoothing}")
    if not 0 <= cfg.model.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1). Received: {cfg.model.dropout}")
    if not 0 <= cfg.model.bn_momentum < 1:
        raise UserError(f"--bn-momentum must be in [0, 1) (0 keeps each architecture's own). "
                        f"Received: {cfg.model.bn_momentum}")
    if cfg.export.ensemble_members < 2:
        raise UserError(f"--ensemble-members must be at least 2. "
                        f"Received: {cfg.export.ensemble_members}")
    if cfg.train.bn_recalibration < 0:
        raise UserError(f"--bn-recalibration must be >= 0 (0 disables). "
                        f"Received: {cfg.train.bn_recalibration}")
    for frac_name in ("val_fraction", "test_fraction"):
        v = getattr(d, frac_name)
        if not 0 < v < 0.5:
            raise UserError(f"--{frac_name.replace('_', '-')} must be in (0, 0.5). Received: {v}")
    for aug in filter(None, (a.strip() for a in d.augment.split(","))):
        if aug not in AUGMENTATIONS:
            close = difflib.get_close_matches(aug, AUGMENTATIONS, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise UserError(f"--augment: unknown augmentation '{aug}'.{hint} "
                            f"Allowed: {', '.join(AUGMENTATIONS)}")
    if not cfg.model.prior_scale > 0:
        raise UserError(f"--prior-scale must be positive. Received: {cfg.model.prior_scale}")
    if cfg.eval.mc_samples <= 0:
        raise UserError(f"--mc-samples must be a positive integer. Received: {cfg.eval.mc_samples}")
    if cfg.eval.tta < 0:
        raise UserError(f"--tta must be >= 0. Received: {cfg.eval.tta}")
