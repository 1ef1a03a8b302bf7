"""YAML + command-line merging: the command line wins over the file, the file over the defaults."""

import pytest

from paddle_got.errors import GOTError
from paddle_got.training.arguments import parse_training_arguments


def test_cli_overrides_yaml_which_overrides_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("meta_path: data/meta.json\nlearning_rate: 3.0e-4\nfreeze_vision_tower: False\n"
                      "max_steps: 7\noutput_dir: " + str(tmp_path / "out") + "\n")
    model, data, training = parse_training_arguments(
        ["--config", str(config), "--freeze_vision_tower", "True", "--learning_rate", "1e-5"]
    )
    assert model.freeze_vision_tower is True and training.learning_rate == 1e-5  # command line
    assert training.max_steps == 7 and data.meta_path == "data/meta.json"  # YAML
    assert training.lr_scheduler_type.value == "cosine"  # GOT default
    assert training.warmup_ratio == 0.001 and training.max_grad_norm == 1.0 and data.max_seq_length == 8192


def test_shipped_configs_parse():
    for name, frozen in (("stage2", False), ("stage3", True)):
        model, data, training = parse_training_arguments(["-c", f"configs/{name}.yaml", "--bf16", "False"])
        assert model.freeze_vision_tower is frozen and data.meta_path == "data/synthdog_en/meta.json"
        assert training.learning_rate == 2e-5 and training.per_device_train_batch_size == 4


def test_missing_meta_path_is_one_sentence():
    with pytest.raises(GOTError, match=r"^No training data: give --meta_path"):
        parse_training_arguments(["--output_dir", "x"])


def test_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: [1\n")
    with pytest.raises(GOTError, match=r"bad\.yaml is not valid YAML"):
        parse_training_arguments(["--config", str(tmp_path / "bad.yaml")])
