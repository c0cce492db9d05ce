"""``--model-arg``: builder arguments checked against the builder, every family's knobs, the
run-directory round trip, and the compound-scaling explorer."""

from __future__ import annotations

import gc
import json
import math

import keras
import pytest
import yaml

from kerascls.config import Config, make_parser, resolve
from kerascls.errors import UserError
from kerascls.registry import (
    build_model,
    check_model_args,
    model_arg_overrides,
    model_arguments,
    parse_model_arg_pairs,
)


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()
    gc.collect()


def _trainable(model) -> int:
    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


def build(name, *pairs, size=32, classes=10):
    args = check_model_args(name, parse_model_arg_pairs(pairs))
    return build_model(name, (size, size, 3), classes, **model_arg_overrides(args))


# ----------------------------------------------------------------------------- checking

def test_arguments_come_from_the_builder_signature():
    assert model_arguments("resnet20")["depths"] == (3, 3, 3)
    assert {"layers", "filters", "batch_norm"} <= set(model_arguments("vgg11"))
    assert {"growth_rate", "blocks", "compression"} <= set(model_arguments("densenet121"))
    assert {"modules", "pool_type"} <= set(model_arguments("inception_v1"))
    assert {"width_coefficient", "depth_coefficient", "resolution"} <= set(
        model_arguments("efficientnet_b0"))
    assert "alpha" in model_arguments("mobilenet_v2")
    assert not {"normalize", "dropout", "name", "num_classes"} & set(model_arguments("vgg11"))


def test_values_are_typed_by_the_builder_defaults():
    args = check_model_args("resnet20", parse_model_arg_pairs(
        ["depths=2,2,2", "widths=[8, 16, 32]", "block=basic"]))
    assert args == {"depths": [2, 2, 2], "widths": [8, 16, 32], "block": "basic"}
    assert check_model_args("efficientnet_b0", {"width_coefficient": 1}) == {
        "width_coefficient": 1.0}


@pytest.mark.parametrize("name, pairs, needle", [
    ("resnet20", ["dept=32"], "unknown model argument 'dept' for resnet20. Did you mean: depth"),
    ("densenet121", ["growth=12"], "Did you mean: growth_rate"),
    ("vgg11", ["normalize=unit"], "has its own option (--normalize)"),
    ("resnet20", ["depth=2.5"], "'depth' must be an integer. Received: depth=2.5"),
    ("resnet20", ["widths=a,b"], "'widths' must be a list of int"),
    ("efficientnet_b0", ["width_coefficient=wide"], "must be a number"),
    ("vgg11", ["batch_norm=3"], "must be true or false"),
    ("resnet20", ["depth"], "--model-arg takes KEY=VALUE"),
])
def test_bad_keys_and_types_are_refused_in_one_line(name, pairs, needle):
    with pytest.raises(UserError, match=None) as info:
        check_model_args(name, parse_model_arg_pairs(pairs))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, pairs, needle", [
    ("resnet20", ["depth=21"], "depth 21 cannot be made from cifar blocks"),
    ("resnet18", ["depth=50"], "depth 50 cannot be made from basic blocks"),
    ("densenet_bc100", ["growth_rate=0"], "growth_rate must be a positive integer"),
    ("densenet_bc100", ["compression=0.001"], "rounds the 216 channels of transition"),
    ("efficientnet_b0", ["width_coefficient=0.05"], "rounds the 16-channel stage to 0"),
    ("mobilenet_v1", ["alpha=0.01"], "rounds the 32 channels"),
    ("vgg11", ["layers=1,1,1"], "filters must give a positive filter count for each of the 3"),
    ("inception_v1", ["pool_type=min"], "pool_type must be one of max, avg"),
    ("inception_v3", ["pool_type=avg"], "apply to inception_v1 only"),
])
def test_impossible_architectures_are_refused(name, pairs, needle):
    with pytest.raises(UserError, match=None) as info:
        build(name, *pairs)
    assert needle in str(info.value)


# ------------------------------------------------------------------------------ the knobs

def test_resnet_depth_rebuilds_the_papers_networks():
    assert _trainable(build("resnet20", "depth=32")) == 464_154  # ResNet-32, He et al. 4.2
    narrow = build("resnet20", "widths=8,16,32")
    assert narrow.get_layer("conv4_block1_1_conv").filters == 32


def test_vgg_layers_and_filters_make_the_blocks():
    model = build("vgg11", "layers=1,2", "filters=16,32", "batch_norm=true")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 32, 32]
    assert model.get_layer("block2_bn2") is not None


def test_densenet_growth_rate_blocks_and_compression():
    model = build("densenet_bc100", "growth_rate=6", "blocks=2,2", "compression=1.0")
    # 2k stem channels, +2 x 6 in block 1, kept whole by the transition, +2 x 6 in block 2.
    assert model.get_layer("pool2_conv").filters == 24
    assert model.get_layer("conv3_block2_concat").output.shape[-1] == 36


def test_inception_module_table_paths_and_pooling():
    model = build("inception_v1", "modules=[[3a, 16, 0, 0, 8, 16, 8], pool, [4a, 32, 16, 32, 0, "
                  "0, 0]]", "pool_type=avg")
    names = {layer.name for layer in model.layers}
    assert "inception3a_3x3_conv" not in names and "inception3a_5x5_conv" in names
    assert isinstance(model.get_layer("inception3a_pool"), keras.layers.AveragePooling2D)
    assert model.get_layer("inception3a_concat").output.shape[-1] == 40
    assert "inception4a_pool" not in names


def test_efficientnet_coefficients_and_resolution():
    b2 = build_model("efficientnet_b2", (32, 32, 3), 10)
    scaled = build("efficientnet_b0", "width_coefficient=1.1", "depth_coefficient=1.2",
                   "resolution=40")
    assert scaled.count_params() == b2.count_params()
    assert tuple(scaled.get_layer("resolution").output.shape[1:3]) == (40, 40)


def test_mobilenet_alpha():
    assert build("mobilenet_v2", "alpha=0.5").get_layer("conv1").filters == 16


# ---------------------------------------------------------------- config and run directory

def test_flags_and_yaml_give_model_args(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  model: resnet20\n  args:\n    depth: 32\n    block: cifar\n")
    parser = make_parser("t", "")
    cfg = resolve(parser.parse_args(["--config", str(f), "--model-arg", "depth=44",
                                     "--model-arg", "widths=8,16,32"]))
    assert cfg.model.args == {"depth": 44, "block": "cifar", "widths": "8,16,32"}
    f.write_text("model:\n  args: [depth]\n")
    with pytest.raises(UserError, match="model.args must be a mapping"):
        Config.load(f)


def test_model_args_round_trip_through_the_run_directory(tmp_path):
    from conftest import train_run

    run_dir = train_run(tmp_path, "--dataset", "digits", "--model", "resnet20", "--image-size",
                        "8", "--epochs", "1", "--formats", "", "--bn-recalibration", "0",
                        "--model-arg", "depth=8", "--model-arg", "widths=4,8,8")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["args"]
    assert saved == {"depth": 8, "widths": [4, 8, 8]}
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["model_args"] == saved
    again = Config.load(run_dir / "config.yaml")
    rebuilt = build_model("resnet20", (8, 8, 3), meta["num_classes"],
                          **model_arg_overrides(check_model_args("resnet20", again.model.args)))
    trained = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in trained.weights]


def test_training_refuses_bad_model_args_before_writing_anything(tmp_path, capsys):
    from kerascls.train import main

    code = main(["--dataset", "digits", "--model", "densenet_bc100", "--epochs", "1",
                 "--output-dir", str(tmp_path / "runs"), "--model-arg", "growth_rate=0"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "growth_rate must be a positive" in err
    assert not (tmp_path / "runs").exists()


def test_summary_cli_shows_and_refuses(capsys):
    from kerascls.models.__main__ import main

    assert main(["summary", "resnet20", "--model-arg", "depth=8"]) == 0
    assert "model arguments: {'depth': 8}" in capsys.readouterr().out
    assert main(["summary", "resnet20", "--model-arg", "depht=8"]) == 2
    assert "Did you mean: depth" in capsys.readouterr().err


# ------------------------------------------------------------------------ compound scaling

def test_compound_coefficients_and_phi_parsing():
    from kerascls.compound import coefficients, parse_phis, search_grid

    assert parse_phis("0..3") == [0.0, 1.0, 2.0, 3.0] and parse_phis("0,0.5") == [0.0, 0.5]
    with pytest.raises(UserError, match="--phi"):
        parse_phis("0..x")
    assert coefficients(1.0) == (1.1, 1.2, 256)  # the released B2 width and depth
    assert coefficients(1.0, 1.0, 1.0, 1.2, base=32) == (1.0, 1.0, 38)
    for alpha, beta, gamma in search_grid():
        assert gamma >= 1.0 and abs(alpha * beta ** 2 * gamma ** 2 - 2.0) < 0.01


def test_scale_table_doubles_macs_per_phi():
    from kerascls.compound import scale_table

    rows = scale_table("efficientnet", [0.0, 1.0], alpha=1.0, beta=1.0, gamma=2 ** 0.5,
                       base=32, num_classes=10)
    assert rows[0]["mac_ratio"] == 1.0 and rows[1]["resolution"] == 46
    # resolution only: MACs grow with the pixel count, (46 / 32)^2 = 2.07
    assert 1.9 < rows[1]["mac_ratio"] < 2.2 and rows[1]["params"] == rows[0]["params"]


def test_grid_search_writes_table_and_plot(tmp_path):
    from kerascls.compound import grid_search

    result = grid_search("efficientnet", dataset="digits", base=8, epochs=1,
                         base_width=0.25, base_depth=0.25, candidates=[(1.2, 1.1, 1.17)],
                         out_dir=tmp_path, log=lambda *_: None)
    assert [r["phi"] for r in result["rows"]] == [0.0, 1.0]
    assert result["best"]["alpha"] == 1.2 and result["rows"][1]["resolution"] == 10
    assert result["rows"][1]["macs"] > result["rows"][0]["macs"]
    saved = json.loads((tmp_path / "compound_search.json").read_text())
    assert saved["rows"] == result["rows"]
    assert "| 1 | 1.2 | 1.1 | 1.17 |" in (tmp_path / "compound_search.md").read_text()
    assert (tmp_path / "compound_search.png").read_bytes()[:4] == b"\x89PNG"
