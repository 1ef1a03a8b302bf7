"""GOTConfig from each config.json layout, and the released architecture's sizes (docs/design.md §1)."""

import math

import paddle

import reference
from reference import SHAPES

from paddle_got import GOTConfig, GOTQwenForCausalLM


def test_released_defaults():
    config = GOTConfig()
    assert config.vision_config.grid_size == 64
    assert config.image_tokens_per_tile == 256
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.head_dim) == (151860, 1024, 24, 64)


def test_released_parameter_counts():
    """The parameter counts of docs/design.md §1, built lazily (nothing allocated)."""
    with paddle.LazyGuard():
        model = GOTQwenForCausalLM(GOTConfig())
    counts = {"vision": 0, "rest": 0}
    for name, parameter in model.named_parameters():
        counts["vision" if ".vision_tower_high." in name else "rest"] += math.prod(parameter.shape)
    assert counts["vision"] == 95_569_152
    assert counts["rest"] == 464_959_488
    assert counts["vision"] + counts["rest"] == 560_528_640


def test_hf_config_layout():
    shape = SHAPES[1]
    config = GOTConfig.from_dict(reference.hf_config(shape).to_dict())
    assert config.im_patch_token == reference.IMG_PAD_ID
    assert (config.hidden_size, config.num_key_value_heads, config.rope_theta) == (64, 2, 1e4)
    assert config.vision_config.window_size == 4 and config.vision_config.global_attn_indexes == [0, 2]
    assert config.image_tokens_per_tile == shape.tokens_per_tile == 9


def test_got_config_layout_with_and_without_vision_config():
    shape = SHAPES[2]
    with_vision = GOTConfig.from_dict(reference.got_config_dict(shape))
    assert with_vision.vision_config.image_size == 80 and with_vision.image_tokens_per_tile == 9
    without_vision = GOTConfig.from_dict(reference.got_config_dict(shape, with_vision_config=False))
    assert without_vision.hidden_size == shape.text_hidden
    assert without_vision.vision_config == GOTConfig().vision_config


def test_to_dict_round_trip():
    config = GOTConfig.from_dict(reference.hf_config(SHAPES[0]).to_dict())
    assert GOTConfig.from_dict(config.to_dict()) == config
