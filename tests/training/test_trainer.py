"""GOTTrainer: the batch loss equals the transformers reference; stage 2 trains everything, stage 3 leaves the
vision encoder bit-identical; every rank sees its slice of the same global batches."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from paddle_got import GOTQwenForCausalLM
from paddle_got.data.annotations import load_meta
from paddle_got.data.dataset import GOTDataset, collate_right_padded
from paddle_got.processing import GOTProcessor
from paddle_got.training.arguments import parse_training_arguments
from paddle_got.training.run import enable_recompute, train
from paddle_got.training.trainer import GlobalBatchSampler, GOTTrainer


def test_batch_loss_equals_reference(ocr_checkpoint, synth_data, tmp_path):
    processor = GOTProcessor.from_pretrained(ocr_checkpoint.directory)
    dataset = GOTDataset(load_meta(synth_data), processor)
    batch = collate_right_padded([dataset[i] for i in range(4)], pad_token_id=processor.tokenizer.pad_token_id)
    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    _, _, args = parse_training_arguments(["--meta_path", synth_data, "--output_dir", str(tmp_path)])
    trainer = GOTTrainer(model=model, args=args, processor=processor)
    ours = float(trainer.compute_loss(model, batch))
    with torch.no_grad():
        expected = ocr_checkpoint.model(
            input_ids=torch.from_numpy(batch["input_ids"].numpy()),
            attention_mask=torch.from_numpy(batch["attention_mask"].numpy()),
            pixel_values=torch.from_numpy(batch["pixel_values"].numpy()),
            labels=torch.from_numpy(batch["labels"].numpy()),
        ).loss.item()
    assert ours == pytest.approx(expected, rel=1e-5)


def parameters(model):
    return {name: p.numpy().copy() for name, p in model.named_parameters()}


def two_step_arguments(checkpoint, meta_path, output_dir, *extra):
    """Training arguments for two steps of batch 2 on `checkpoint`'s model, then `extra`."""
    common = ["--model_name_or_path", checkpoint.directory, "--meta_path", meta_path, "--output_dir", str(output_dir)]
    return parse_training_arguments([*common, "--max_steps", "2", "--per_device_train_batch_size", "2", *extra])


@pytest.mark.parametrize("freeze", [False, True], ids=["stage2", "stage3"])
def test_stage_2_trains_the_encoder_and_stage_3_freezes_it(freeze, ocr_checkpoint, synth_data, tmp_path):
    before = parameters(GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory))
    extra = ["--learning_rate", "1e-3", "--save_steps", "100", "--freeze_vision_tower", str(freeze)]
    arguments = two_step_arguments(ocr_checkpoint, synth_data, tmp_path / "out", *extra)
    after = parameters(train(*arguments).model)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    encoder = {name for name in before if ".vision_tower_high." in name}
    decoder = {name for name in before if name.startswith("qwen2.layers.")}
    assert decoder <= changed and "qwen2.mm_projector_vary.weight" in changed
    if freeze:
        assert not changed & encoder
    else:
        assert encoder <= changed


def test_ranks_take_slices_of_the_same_global_batches():
    dataset = list(range(10))
    single = list(GlobalBatchSampler(dataset, batch_size=4, num_replicas=1, rank=0, seed=3))
    ranks = [list(GlobalBatchSampler(dataset, batch_size=2, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    assert [a + b for a, b in zip(*ranks)] == single
    assert sorted(set(sum(single, []))) == dataset  # every sample, the last batch completed from the start
    epoch_one = GlobalBatchSampler(dataset, batch_size=4, num_replicas=1, rank=0, seed=3)
    epoch_one.set_epoch(1)
    assert list(epoch_one) != single


def test_recompute_gives_the_same_gradients(ocr_checkpoint, synth_data):
    processor = GOTProcessor.from_pretrained(ocr_checkpoint.directory)
    dataset = GOTDataset(load_meta(synth_data), processor)
    batch = collate_right_padded([dataset[i] for i in range(3)], pad_token_id=processor.tokenizer.pad_token_id)
    gradients, forward_calls = [], []
    for checkpointing in (False, True):
        model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
        model.train()
        if checkpointing:
            enable_recompute(model)
        calls = []
        for layer in (model.qwen2.layers[0], model.qwen2.vision_tower_high.blocks[0]):
            layer.register_forward_post_hook(lambda layer, inputs, outputs: calls.append(layer))
        output = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], labels=batch["labels"])
        output.loss.backward()
        gradients.append({name: p.grad.numpy() for name, p in model.named_parameters()})
        forward_calls.append(len(calls))
    assert forward_calls == [2, 4]  # with recompute, both layers run again during backward
    for name, gradient in gradients[0].items():
        np.testing.assert_allclose(gradients[1][name], gradient, rtol=1e-5, atol=1e-7, err_msg=name)


def test_merged_lora_weights_give_the_adapted_model(ocr_checkpoint):
    import paddle

    from paddle_got.training.lora import apply_lora, merged_state_dict

    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    apply_lora(model, rank=4, alpha=8)
    trainable = {name for name, p in model.named_parameters() if not p.stop_gradient}
    assert trainable and all(".lora_A" in name or ".lora_B" in name for name in trainable)
    for name, parameter in model.named_parameters():
        if ".lora_B" in name:  # adapters start at zero; make them matter
            parameter.set_value(paddle.normal(0.0, 0.05, parameter.shape))
    ids = paddle.to_tensor(np.arange(3, 40, dtype="int64")[None])
    adapted = model(ids).logits.numpy()
    plain = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    base = plain(ids).logits.numpy()
    plain.set_state_dict(merged_state_dict(model))
    merged = plain(ids).logits.numpy()
    assert np.abs(adapted - base).max() > 1e-3
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-5)


def test_lora_training_saves_merged_weights_and_resumable_adapters(ocr_checkpoint, synth_data, tmp_path):
    before = parameters(GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory))
    extra = ["--learning_rate", "1e-2", "--save_steps", "1", "--lora", "True", "--lora_rank", "4"]
    arguments = two_step_arguments(ocr_checkpoint, synth_data, tmp_path / "out", *extra)
    train(*arguments)
    merged = parameters(GOTQwenForCausalLM.from_pretrained(str(tmp_path / "out")))
    assert merged.keys() == before.keys()
    assert not np.array_equal(
        merged["qwen2.layers.0.self_attn.q_proj.weight"], before["qwen2.layers.0.self_attn.q_proj.weight"]
    )
    for name in before:
        if not any(target in name for target in ("_proj.weight",)) or ".vision_tower_high." in name:
            np.testing.assert_array_equal(merged[name], before[name], err_msg=name)
    checkpoint = load_file(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"))
    assert "qwen2.layers.0.self_attn.q_proj.lora_A" in checkpoint
