"""YAML + command-line merging: the command line wins over the file, the file over the defaults."""

import pytest

from paddle_got.errors import GOTError
from paddle_got.training.arguments import parse_training_arguments


def test_cli_overrides_yaml_which_overrides_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "meta_path: data/meta.json\nlearning_rate: 3.0e-4\nfreeze_vision_tower: False\n"
        "max_steps: 7\noutput_dir: " + str(tmp_path / "out") + "\n"
    )
    model, data, training = parse_training_arguments(
        ["--config", str(config), "--freeze_vision_tower", "True", "--learning_rate", "1e-5"]
    )
    assert model.freeze_vision_tower is True and training.learning_rate == 1e-5  # command line
    assert training.max_steps == 7 and data.meta_path == "data/meta.json"  # YAML
    assert training.lr_scheduler_type.value == "cosine"  # GOT default
    assert training.warmup_ratio == 0.001 and training.max_grad_norm == 1.0 and data.max_seq_length == 8192


def test_shipped_configs_parse_to_the_reference_recipe():
    parsed = {}
    for name in ("stage2", "stage3"):
        model, data, training = parse_training_arguments(["-c", f"configs/{name}.yaml", "--bf16", "False"])
        assert model.model_name_or_path == "stepfun-ai/GOT-OCR2_0" and data.meta_path == "data/synthdog_en/meta.json"
        assert training.learning_rate == 2e-5 and training.per_device_train_batch_size == 4
        assert training.lr_scheduler_type.value == "cosine" and training.warmup_ratio == 0.001
        assert training.weight_decay == 0.0 and training.max_grad_norm == 1.0 and data.max_seq_length == 8192
        assert training.num_train_epochs == 1 and training.recompute and training.save_steps == 1000
        parsed[name] = (model, training.output_dir)
    assert parsed["stage2"][0].freeze_vision_tower is False and parsed["stage3"][0].freeze_vision_tower is True
    assert parsed["stage2"][1] == "output/got_stage2" and parsed["stage3"][1] == "output/got_stage3"


def test_a_config_starts_from_its_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("meta_path: data/meta.json\nlearning_rate: 3.0e-4\nmax_steps: 9\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nlearning_rate: 1.0e-5\n")
    _, data, training = parse_training_arguments(["-c", str(tmp_path / "child.yaml")])
    assert data.meta_path == "data/meta.json" and training.max_steps == 9 and training.learning_rate == 1e-5


def test_missing_meta_path_is_one_sentence():
    with pytest.raises(GOTError, match=r"^No training data: give --meta_path"):
        parse_training_arguments(["--output_dir", "x"])


def test_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: [1\n")
    with pytest.raises(GOTError, match=r"bad\.yaml is not valid YAML"):
        parse_training_arguments(["--config", str(tmp_path / "bad.yaml")])
