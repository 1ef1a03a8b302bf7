"""Checkpoint layouts, formats, round trips and the one-sentence errors of `from_pretrained`."""

import json
import os
import shutil
import stat

import numpy as np
import paddle
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import reference
from reference import SHAPES

from paddle_got import CheckpointError, GOTQwenForCausalLM
from paddle_got.checkpoint import detect_layout

SHAPE = SHAPES[0]


def parameters(model):
    return {name: tensor.numpy() for name, tensor in model.state_dict().items()}


def copy_checkpoint(source, destination):
    shutil.copytree(source, destination)
    return str(destination)


def test_save_pretrained_round_trip_is_bit_exact(checkpoint_dirs, tmp_path):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPE, "hf"))
    model.save_pretrained(str(tmp_path / "ours"))
    # generation_config.json is the source checkpoint's, copied along with the rest of its processor files.
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "generation_config.json", "model.safetensors"]
    reloaded = GOTQwenForCausalLM.from_pretrained(str(tmp_path / "ours"))
    before, after = parameters(model), parameters(reloaded)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.parametrize("layout", ["hf", "got", "got_bin"])
def test_loaded_parameters_are_contiguous(layout, checkpoint_dirs):
    """PyTorch layouts are transposed on load; a strided parameter would make every matmul copy its weight."""
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPE, layout))
    strided = [name for name, parameter in model.named_parameters() if not parameter.is_contiguous()]
    assert strided == []


def test_our_layout_uses_paddlemix_names_and_paddle_linear_layout(checkpoint_dirs, reference_models):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPE, "hf"))
    names = set(model.state_dict())
    for expected in [
        "qwen2.embed_tokens.weight",
        "qwen2.layers.0.self_attn.q_proj.weight",
        "qwen2.layers.1.mlp.gate_proj.weight",
        "qwen2.norm.weight",
        "qwen2.vision_tower_high.patch_embed.proj.weight",
        "qwen2.vision_tower_high.blocks.0.attn.rel_pos_h",
        "qwen2.vision_tower_high.neck.3.bias",
        "qwen2.vision_tower_high.net_2.weight",
        "qwen2.vision_tower_high.net_3.weight",
        "qwen2.mm_projector_vary.bias",
    ]:
        assert expected in names
    torch_state = reference_models(SHAPE).state_dict()
    np.testing.assert_array_equal(
        model.state_dict()["qwen2.layers.0.self_attn.q_proj.weight"].numpy(),
        torch_state["language_model.model.layers.0.self_attn.q_proj.weight"].numpy().T,
    )
    np.testing.assert_array_equal(
        model.state_dict()["qwen2.vision_tower_high.net_3.weight"].numpy(),
        torch_state["multi_modal_projector.conv_upsampler2.weight"].numpy(),
    )


def test_paddlemix_pdparams_checkpoint_loads(checkpoint_dirs, tmp_path):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPE, "got"))
    directory = tmp_path / "paddlemix"
    directory.mkdir()
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["qwen2.embed_tokens.weight"].T  # PaddleMIX stores the tied head, [in, out]
    paddle.save(state, str(directory / "model_state.pdparams"))
    with open(directory / "config.json", "w") as f:
        json.dump(reference.got_config_dict(SHAPE), f)
    loaded = GOTQwenForCausalLM.from_pretrained(str(directory))
    assert loaded.lm_head is None
    for name, value in parameters(model).items():
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), value)


def test_sharded_safetensors_checkpoint_loads(checkpoint_dirs, tmp_path):
    source = checkpoint_dirs(SHAPE, "hf")
    state = load_file(os.path.join(source, "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    directory = tmp_path / "sharded"
    directory.mkdir()
    shutil.copy(os.path.join(source, "config.json"), directory)
    weight_map = {}
    for file_name, shard_names in shards.items():
        save_file({n: state[n] for n in shard_names}, str(directory / file_name), metadata={"format": "pt"})
        weight_map.update({n: file_name for n in shard_names})
    with open(directory / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    sharded = parameters(GOTQwenForCausalLM.from_pretrained(str(directory)))
    for name, value in parameters(GOTQwenForCausalLM.from_pretrained(source)).items():
        np.testing.assert_array_equal(sharded[name], value)


def test_bfloat16_checkpoint_loads_as_float32(checkpoint_dirs, tmp_path):
    source = checkpoint_dirs(SHAPE, "hf")
    state = load_file(os.path.join(source, "model.safetensors"))
    directory = tmp_path / "bf16"
    directory.mkdir()
    shutil.copy(os.path.join(source, "config.json"), directory)
    save_file({n: t.bfloat16() for n, t in state.items()}, str(directory / "model.safetensors"))
    model = GOTQwenForCausalLM.from_pretrained(str(directory), dtype="float32")
    loaded = model.state_dict()["qwen2.vision_tower_high.blocks.0.attn.qkv.weight"]
    assert loaded.dtype == paddle.float32
    expected = state["vision_tower.layers.0.attn.qkv.weight"].bfloat16().float().numpy().T
    np.testing.assert_array_equal(loaded.numpy(), expected)


def test_layout_detection():
    assert detect_layout(["qwen2.embed_tokens.weight"]) == "paddle"
    assert detect_layout(["model.embed_tokens.weight", "model.vision_tower_high.pos_embed"]) == "got"
    assert detect_layout(["language_model.model.norm.weight", "vision_tower.pos_embed"]) == "hf"


# --- errors: one sentence that says what is wrong ----------------------------------------------------------------


def expect_error(path, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as caught:
        GOTQwenForCausalLM.from_pretrained(str(path), **kwargs)
    assert "\n" not in str(caught.value)


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nowhere", r"No config\.json found in .*nowhere")


def test_missing_config(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "hf"), tmp_path / "c")
    os.remove(os.path.join(directory, "config.json"))
    expect_error(directory, r"No config\.json found in .*: a checkpoint directory needs one\.")


def test_directory_without_weights(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "hf"), tmp_path / "c")
    os.remove(os.path.join(directory, "model.safetensors"))
    expect_error(
        directory, r"No weights found in .*: expected one of model\.safetensors\.index\.json, model\.safetensors"
    )


def test_corrupt_weights_file(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "hf"), tmp_path / "c")
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(b"\x00garbage, not a safetensors header")
    expect_error(directory, r"Cannot read .*model\.safetensors")


def test_corrupt_pdparams_is_one_sentence_with_one_full_stop(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "hf"), tmp_path / "c")
    os.remove(os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "model_state.pdparams"), "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"Cannot read .*model_state\.pdparams: ") as caught:
        GOTQwenForCausalLM.from_pretrained(directory)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(".") and not message.endswith("..")


def test_load_log_names_the_stored_dtype_and_the_loaded_one(checkpoint_dirs, tmp_path, caplog):
    source = checkpoint_dirs(SHAPE, "hf")
    directory = tmp_path / "bf16"
    directory.mkdir()
    shutil.copy(os.path.join(source, "config.json"), directory)
    state = load_file(os.path.join(source, "model.safetensors"))
    save_file({n: t.bfloat16() for n, t in state.items()}, str(directory / "model.safetensors"))
    with caplog.at_level("INFO", logger="paddle_got"):
        GOTQwenForCausalLM.from_pretrained(str(directory), dtype="float32")
    assert "tensors, stored as bfloat16, loaded as float32)." in caplog.text


def test_saved_model_carries_the_tokenizer_it_was_loaded_with(ocr_checkpoint, tmp_path):
    """model.save_pretrained(dir) gives a directory that GOT reads as it is (tokenizer files copied along)."""
    from paddle_got import GOT

    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    model.save_pretrained(str(tmp_path / "saved"))
    assert "qwen.tiktoken" in os.listdir(tmp_path / "saved")
    image = Image.new("RGB", (120, 90), "white")
    original = GOT.from_pretrained(ocr_checkpoint.directory).recognize(image, max_new_tokens=6)[0]
    saved = GOT.from_pretrained(str(tmp_path / "saved")).recognize(image, max_new_tokens=6)[0]
    assert original.error is None and saved.text == original.text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(checkpoint_dirs, tmp_path, umask):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPE, "hf"))
    previous = os.umask(umask)
    try:
        model.save_pretrained(str(tmp_path / "out"))
    finally:
        os.umask(previous)
    for name in os.listdir(tmp_path / "out"):
        assert stat.S_IMODE(os.stat(tmp_path / "out" / name).st_mode) == 0o666 & ~umask, name


def rewrite_weights(directory, edit):
    path = os.path.join(directory, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def test_missing_parameters_are_listed(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "got"), tmp_path / "c")
    rewrite_weights(directory, lambda s: [s.pop(k) for k in [k for k in s if k.startswith("model.layers.1.")]])
    expect_error(
        directory,
        r"lacks parameters the model needs: qwen2\.layers\.1\.input_layernorm\.weight, .* and \d+ more\.$",
    )


def test_unexpected_parameters_are_listed(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "got"), tmp_path / "c")
    rewrite_weights(directory, lambda s: s.update({"model.extra_adapter.weight": torch.zeros(2, 2)}))
    expect_error(directory, r"has parameters the model does not know: qwen2\.extra_adapter\.weight\.$")


def test_shape_mismatch_names_expected_and_found(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "got"), tmp_path / "c")
    rewrite_weights(directory, lambda s: s.update({"model.mm_projector_vary.bias": torch.zeros(7)}))
    expect_error(
        directory,
        rf"Shape mismatch for qwen2\.mm_projector_vary\.bias: the model expects \[{SHAPE.text_hidden}\], "
        r"the checkpoint has \[7\]\.",
    )


def test_unknown_layout(checkpoint_dirs, tmp_path):
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "hf"), tmp_path / "c")
    save_file({"encoder.weight": torch.zeros(2)}, os.path.join(directory, "model.safetensors"))
    expect_error(directory, r"Unknown checkpoint layout: .* found encoder\.weight\.")


def test_got_config_without_vision_config_means_the_released_encoder(checkpoint_dirs, tmp_path):
    """Tiny weights + a config silent about the encoder: the released ViT-B/1024 shapes are expected."""
    directory = copy_checkpoint(checkpoint_dirs(SHAPE, "got"), tmp_path / "c")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(reference.got_config_dict(SHAPE, with_vision_config=False), f)
    # The released encoder has 12 blocks; the tiny checkpoint has 3, so blocks 3..11 are reported missing.
    expect_error(directory, r"lacks parameters the model needs: qwen2\.vision_tower_high\.blocks\.10\.")


def test_unsupported_dtype(checkpoint_dirs):
    expect_error(checkpoint_dirs(SHAPE, "hf"), r"Unsupported dtype 'int8'", dtype="int8")
