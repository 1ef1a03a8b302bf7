"""Build everything a training run needs from parsed arguments, and run it."""

import os
from functools import partial

from paddlenlp.trainer import set_seed
from paddlenlp.trainer.trainer_utils import get_last_checkpoint

from ..config import CONFIG_NAME, GOTConfig
from ..data.annotations import load_meta
from ..data.dataset import GOTDataset, collate_right_padded, log_stats
from ..device import gpu_compute_capability, leave_launch, set_cpu_threads
from ..errors import GOTError
from ..hub import resolve_model_path
from ..logger import logger
from ..modeling.got import GOTQwenForCausalLM
from ..processing import GOTProcessor, PromptConfig
from .lora import apply_lora
from .trainer import GOTTrainer


def freeze_vision_tower(model: GOTQwenForCausalLM) -> None:
    """Stage 3: the vision encoder (with net_2/net_3) gets no gradient and is never updated."""
    for parameter in model.qwen2.vision_tower_high.parameters():
        parameter.stop_gradient = True


def load_model(model_args, seed: int):
    """`(model, processor)` for training: the checkpoint's weights, or fresh ones with `from_scratch`."""
    path = resolve_model_path(model_args.model_name_or_path, model_args.model_source)
    processor = GOTProcessor.from_pretrained(path)
    if model_args.from_scratch:
        # Paddle's own initialisers (Xavier/Kaiming-style): with normal(0, 0.02) a tiny model learned to ignore
        # the image (measured on rendered strings), with these it reads.
        set_seed(seed)
        model = GOTQwenForCausalLM(GOTConfig.from_pretrained(path))
    else:
        model = GOTQwenForCausalLM.from_pretrained(path, dtype="float32")
    if model_args.freeze_vision_tower:
        freeze_vision_tower(model)
    if model_args.lora:
        apply_lora(model, model_args.lora_rank, model_args.lora_alpha)
    model.train()
    return model, processor


def enable_recompute(model: GOTQwenForCausalLM) -> None:
    """Gradient checkpointing in every decoder layer and vision block (`--recompute True`)."""
    model.qwen2.gradient_checkpointing = True
    model.qwen2.vision_tower_high.gradient_checkpointing = True


def resolve_resume(training_args):
    """The checkpoint to resume from: a directory, or the last one in output_dir for "true"/"auto"; or None."""
    resume = training_args.resume_from_checkpoint
    if not resume or str(resume).lower() in ("false", "none"):
        return None
    if str(resume).lower() in ("true", "auto"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise GOTError(f"No checkpoint to resume from in {training_args.output_dir}.")
        return last
    if not os.path.isdir(resume):
        raise GOTError(f"Checkpoint {resume} does not exist.")
    return resume


def check_fresh_output_dir(training_args, resume) -> None:
    """GOTError when a new run would start over in an output_dir that already holds one (nothing is deleted)."""
    output_dir = training_args.output_dir
    if resume is not None or training_args.overwrite_output_dir or not os.path.isdir(output_dir):
        return
    earlier = get_last_checkpoint(output_dir) or (
        output_dir if os.path.isfile(os.path.join(output_dir, CONFIG_NAME)) else None
    )
    if earlier is not None:
        raise GOTError(
            f"{output_dir} already holds a training run ({os.path.basename(earlier)}): pass "
            "--resume_from_checkpoint true to continue it, --overwrite_output_dir True to train over it, "
            "or another --output_dir."
        )


def check_precision(training_args) -> None:
    """bf16/fp16 training needs a GPU (Paddle's CPU kernels have no half-precision matmul)."""
    if (training_args.bf16 or training_args.fp16) and gpu_compute_capability() is None:
        raise GOTError("bf16/fp16 training needs a GPU: Paddle's CPU kernels have no half-precision matmul.")


def train(model_args, data_args, training_args, callbacks=None) -> GOTTrainer:
    """Train as the arguments say; the final model is written to `output_dir`. Returns the trainer.

    `callbacks` are paddlenlp TrainerCallbacks added to the Trainer's own.
    """
    check_precision(training_args)
    set_cpu_threads()
    resume = resolve_resume(training_args)
    check_fresh_output_dir(training_args, resume)
    model, processor = load_model(model_args, training_args.seed)
    if training_args.recompute:
        enable_recompute(model)
    dataset = GOTDataset(load_meta(data_args.meta_path), processor, data_args.max_seq_length, data_args.strict)
    log_stats(dataset.stats)
    processor.prompt = learned_prompt(dataset, processor.prompt.system_message)
    trainable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    logger.info(f"Training {trainable:,} of {sum(int(p.numel()) for p in model.parameters()):,} parameters")
    trainer = GOTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=partial(collate_right_padded, pad_token_id=processor.tokenizer.pad_token_id),
        processor=processor,
        callbacks=callbacks,
    )
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        close_progress_bars(trainer)
    trainer.save_model()
    leave_launch()
    return trainer


def learned_prompt(dataset: GOTDataset, system_message) -> PromptConfig:
    """The prompt the model learns from `dataset`, saved with every checkpoint as the model's default for reading.

    It is taken from the plain samples (one image, no multi-crop); with none of those the reference prompts stay.
    """
    plain = [r.turns[0][0] for r in dataset.records if len(r.images) == 1 and not r.multi_crop]
    prompt = PromptConfig.from_training_turns(plain)
    prompt.system_message = system_message
    if prompt.query is not None:
        logger.info(f"Training with the query {prompt.query!r}: the saved model reads with it by default.")
    elif len(prompt.queries) > 1:
        logger.info(
            f"The training data asks {len(prompt.queries)} different queries: the saved model keeps the "
            "reference prompts as its defaults."
        )
    return prompt


def close_progress_bars(trainer: GOTTrainer) -> None:
    """Close the Trainer's tqdm bars now, so that an error message printed next is the last line on stderr."""
    for callback in trainer.callback_handler.callbacks:
        bar = getattr(callback, "training_bar", None)
        if bar is not None:
            bar.close()
