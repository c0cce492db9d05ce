import pytest

from kerascls.config import Config, make_parser, resolve
from kerascls.errors import UserError


def parse(*argv):
    return resolve(make_parser("t", "").parse_args(list(argv)))


def test_defaults_flags_and_yaml_layering(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  batch_size: 16\ndata:\n  dataset: sentiment\n")
    cfg = parse("--config", str(f), "--epochs", "3", "--augment", "crop,flip")
    assert cfg.train.epochs == 3          # flag beats file
    assert cfg.train.batch_size == 16     # file beats default
    assert cfg.data.dataset == "sentiment"
    assert cfg.data.augment == "crop,flip"
    assert cfg.train.optimizer == Config().train.optimizer


def test_config_round_trip(tmp_path):
    cfg = parse("--model", "seed_cnn", "--freeze-backbone", "--learning-rate", "0.01")
    cfg.save(tmp_path / "config.yaml")
    again = Config.load(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert again.model.freeze_backbone is True


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "-4"], "--batch-size must be a positive integer"),
    (["--normalize", "zscore"], "--normalize must be one of imagenet, unit, none. Received: zscore"),
    (["--augment", "flipp"], "Did you mean flip?"),
    (["--epochs", "three"], "--epochs must be int"),
])
def test_bad_values_name_the_flag(argv, needle):
    with pytest.raises(UserError, match=None) as exc:
        parse(*argv)
    assert needle in str(exc.value)


def test_unknown_yaml_key_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epocs: 3\n")
    with pytest.raises(UserError, match="Did you mean 'epochs'"):
        parse("--config", str(f))


def test_unknown_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--epoch", "3")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean --epochs" in err
