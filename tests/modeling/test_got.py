"""GOTQwenForCausalLM against the transformers reference: logits, loss and greedy tokens in float32."""

import numpy as np
import paddle
import pytest

import reference
from reference import SHAPES, TinyShape

from paddle_got import CheckpointError, GOTQwenForCausalLM

LOGITS_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5


def load_ours(checkpoint_dirs, shape, layout, tmp_path):
    """Load the shape's reference weights through `layout`; "ours" goes HF -> save_pretrained -> reload."""
    if layout != "ours":
        return GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, layout))
    GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf")).save_pretrained(str(tmp_path / "ours"))
    return GOTQwenForCausalLM.from_pretrained(str(tmp_path / "ours"))


def run_ours(model, ids, mask=None, pixels=None, labels=None):
    """Our forward on numpy inputs; returns `(logits numpy, loss float or None)`."""
    output = model(
        input_ids=paddle.to_tensor(ids),
        pixel_values=None if pixels is None else paddle.to_tensor(pixels),
        attention_mask=None if mask is None else paddle.to_tensor(mask),
        labels=None if labels is None else paddle.to_tensor(labels),
    )
    assert output.logits.dtype == paddle.float32
    return output.logits.numpy(), None if output.loss is None else float(output.loss)


def mixed_batch(shape):
    """Two samples, 1 and 3 tiles, different text lengths, left-padded: `(ids, mask, pixels, labels)`."""
    first = reference.prompt_ids(1, shape, text_before=6, text_after=9, seed=1)
    second = reference.prompt_ids(3, shape, text_before=3, text_after=4, seed=2)
    ids, mask = reference.left_pad([first, second])
    pixels = np.concatenate([reference.random_pixels(1, shape, seed=3), reference.random_pixels(3, shape, seed=4)])
    labels = np.where(mask == 1, ids, -100)
    labels[:, : ids.shape[1] - 5] = -100  # supervise the last 5 tokens of every row only
    return ids, mask, pixels, labels


@pytest.mark.parametrize("layout", ["hf", "got", "got_bin", "ours"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_single_image_logits_match_reference(shape, layout, checkpoint_dirs, reference_models, tmp_path):
    model = load_ours(checkpoint_dirs, shape, layout, tmp_path)
    ids = np.array([reference.prompt_ids(1, shape, text_before=5, text_after=7)])
    pixels = reference.random_pixels(1, shape)
    expected, _ = reference.reference_forward(reference_models(shape), ids, pixels=pixels)
    logits, _ = run_ours(model, ids, pixels=pixels)
    assert logits.shape == expected.shape
    assert reference.relative_error(logits, expected) <= LOGITS_TOLERANCE
    assert logits[0, -1].argmax() == expected[0, -1].argmax()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_batch_with_different_tile_counts_matches_reference(shape, checkpoint_dirs, reference_models):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "got"))
    ids, mask, pixels, labels = mixed_batch(shape)
    expected, expected_loss = reference.reference_forward(reference_models(shape), ids, mask, pixels, labels)
    logits, loss = run_ours(model, ids, mask, pixels, labels)
    real = mask == 1  # logits of padding positions are meaningless on both sides
    assert reference.relative_error(logits[real], expected[real]) <= LOGITS_TOLERANCE
    np.testing.assert_array_equal(logits[:, -1].argmax(-1), expected[:, -1].argmax(-1))
    assert loss == pytest.approx(expected_loss, rel=LOSS_TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_text_only_matches_reference(shape, checkpoint_dirs, reference_models):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    ids, mask = reference.left_pad(
        [reference.prompt_ids(0, shape, 7, 5, seed=5), reference.prompt_ids(0, shape, 3, 2, seed=6)]
    )
    labels = np.where(mask == 1, ids, -100)
    expected, expected_loss = reference.reference_forward(reference_models(shape), ids, mask, labels=labels)
    logits, loss = run_ours(model, ids, mask, labels=labels)
    real = mask == 1
    assert reference.relative_error(logits[real], expected[real]) <= LOGITS_TOLERANCE
    np.testing.assert_array_equal(logits[:, -1].argmax(-1), expected[:, -1].argmax(-1))
    assert loss == pytest.approx(expected_loss, rel=LOSS_TOLERANCE)


def test_batch_rows_equal_single_runs(checkpoint_dirs):
    """Left padding changes nothing: each row's logits equal those of the sample run alone."""
    shape = SHAPES[0]
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    ids, mask, pixels, _ = mixed_batch(shape)
    batched, _ = run_ours(model, ids, mask, pixels)
    tiles = [1, 3]
    for row, (start, count) in enumerate(zip([0, 1], tiles)):
        real = mask[row] == 1
        alone, _ = run_ours(model, ids[row : row + 1, real], pixels=pixels[start : start + count])
        assert reference.relative_error(batched[row, real], alone[0]) <= LOGITS_TOLERANCE


def test_untied_output_head_matches_reference(tmp_path):
    """A GOT-layout checkpoint whose lm_head differs from the embedding keeps it as a separate head."""
    shape = TinyShape("untied", tie_word_embeddings=False)
    model_ref = reference.build_reference(shape, seed=7)
    directory = reference.save_got(model_ref, shape, str(tmp_path / "got"))
    model = GOTQwenForCausalLM.from_pretrained(directory)
    assert model.lm_head is not None and not model.config.tie_word_embeddings
    ids = np.array([reference.prompt_ids(1, shape, 4, 4)])
    pixels = reference.random_pixels(1, shape)
    expected, _ = reference.reference_forward(model_ref, ids, pixels=pixels)
    logits, _ = run_ours(model, ids, pixels=pixels)
    assert reference.relative_error(logits, expected) <= LOGITS_TOLERANCE


@pytest.mark.parametrize("shape", [SHAPES[1], TinyShape("untied", tie_word_embeddings=False)], ids=["gqa", "untied"])
def test_bfloat16_decode_weights_are_filled_straight_from_a_bfloat16_checkpoint(shape, tmp_path):
    """Loading with bfloat16_decode_weights gives the parameters of loading in float32 and then keeping the
    decoder's product weights in bfloat16, bit for bit; None chooses it for a bfloat16 checkpoint only."""
    import torch

    torch_model = reference.build_reference(shape, seed=5)
    bf16_dir = reference.save_got(torch_model.to(torch.bfloat16), shape, str(tmp_path / "bf16"))
    f32_dir = reference.save_got(torch_model.to(torch.float32), shape, str(tmp_path / "f32"))
    two_steps = GOTQwenForCausalLM.from_pretrained(bf16_dir)
    two_steps.keep_decoder_weights_in_bfloat16()
    direct = GOTQwenForCausalLM.from_pretrained(bf16_dir, bfloat16_decode_weights=True)
    expected, held = two_steps.state_dict(), direct.state_dict()
    assert expected.keys() == held.keys()
    for name, value in expected.items():
        assert held[name].dtype == value.dtype, name
        np.testing.assert_array_equal(held[name].astype("float32").numpy(), value.astype("float32").numpy(), name)
    assert held["qwen2.layers.0.mlp.down_proj.weight"].dtype == paddle.bfloat16
    assert held["qwen2.layers.0.self_attn.q_proj.bias"].dtype == paddle.float32
    assert held["qwen2.vision_tower_high.blocks.0.attn.qkv.weight"].dtype == paddle.float32
    automatic = {d: GOTQwenForCausalLM.from_pretrained(d, bfloat16_decode_weights=None) for d in (bf16_dir, f32_dir)}
    assert automatic[bf16_dir].qwen2.embed_tokens.weight.dtype == paddle.bfloat16
    assert automatic[f32_dir].qwen2.embed_tokens.weight.dtype == paddle.float32
    with pytest.raises(CheckpointError, match="bfloat16 decoder weights are for float32 inference, not float16"):
        GOTQwenForCausalLM.from_pretrained(bf16_dir, dtype="float16", bfloat16_decode_weights=True)


def test_tied_release_head_is_tied(checkpoint_dirs):
    """The release stores lm_head equal to the embedding: it is tied, not duplicated."""
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPES[0], "got"))
    assert model.lm_head is None and model.config.tie_word_embeddings
    assert "lm_head.weight" not in model.state_dict()


def test_generated_imgpad_token_without_images_is_an_ordinary_token(checkpoint_dirs, reference_models):
    """A decode step (or a text-only prompt) may hold the <imgpad> id, e.g. generated by the model: both references
    embed it like any token when there are no pixels."""
    shape = SHAPES[0]
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    ids = np.array(
        [
            reference.prompt_ids(0, shape, 4, 3, seed=8)[:4]
            + [shape.img_pad_id] * 2
            + reference.prompt_ids(0, shape, 4, 3, seed=8)[4:]
        ]
    )
    expected, _ = reference.reference_forward(reference_models(shape), ids, np.ones_like(ids))
    logits, _ = run_ours(model, ids)
    assert reference.relative_error(logits, expected) <= LOGITS_TOLERANCE


def test_image_slot_count_mismatch_is_an_error(checkpoint_dirs):
    shape = SHAPES[0]
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    ids = np.array([reference.prompt_ids(2, shape, 3, 3)])  # slots for two tiles
    message = rf"{2 * shape.tokens_per_tile} image slots .* {shape.tokens_per_tile} features"
    with pytest.raises(ValueError, match=message):
        run_ours(model, ids, pixels=reference.random_pixels(1, shape))


def test_loss_of_fully_masked_labels_is_zero_not_nan(checkpoint_dirs):
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(SHAPES[0], "hf"))
    ids = np.array([reference.prompt_ids(0, SHAPES[0], 6, 0)])
    _, loss = run_ours(model, ids, labels=np.full_like(ids, -100))
    assert loss == 0.0


def test_gradients_match_reference_for_a_right_padded_training_batch(checkpoint_dirs, reference_models):
    """Every parameter's gradient of the loss equals the reference's (the layout training uses)."""
    import torch

    from paddle_got.checkpoint import _hf_name, needs_transpose

    shape = SHAPES[0]
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    model.train()
    sequences = [reference.prompt_ids(1, shape, 5, 8, seed=1), reference.prompt_ids(2, shape, 3, 3, seed=2)]
    length = max(len(s) for s in sequences)
    ids, mask = np.zeros((2, length), "int64"), np.zeros((2, length), "int64")
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)], mask[row, : len(sequence)] = sequence, 1
    labels = np.where(mask == 1, ids, -100)
    pixels = np.concatenate([reference.random_pixels(1, shape, 1), reference.random_pixels(2, shape, 2)])
    torch_model = reference_models(shape)
    torch_model.zero_grad()
    torch_model(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        pixel_values=torch.from_numpy(pixels),
        labels=torch.from_numpy(labels),
    ).loss.backward()
    ours = {name: p for name, p in model.named_parameters()}
    loss = model(
        paddle.to_tensor(ids), paddle.to_tensor(pixels), paddle.to_tensor(mask), labels=paddle.to_tensor(labels)
    ).loss
    loss.backward()
    compared = 0
    for name, parameter in torch_model.named_parameters():
        if parameter.grad is None or _hf_name(name) not in ours:
            continue
        expected = parameter.grad.numpy()
        if needs_transpose(_hf_name(name), "hf") and expected.ndim == 2:
            expected = expected.T
        assert reference.relative_error(ours[_hf_name(name)].grad.numpy(), expected) <= 1e-4, name
        compared += 1
    assert compared == len(ours)
