"""GOTTrainer: paddlenlp's Trainer made exact and safe for GOT.

- Every process draws the same seeded permutation per epoch and takes its slice of each global batch, so N
  processes see the same global batches as one process, and a resumed run sees the batches it would have seen.
- The loss is the summed cross-entropy divided by the supervised-token count of the whole global batch, so data
  parallelism averages to exactly the single-process loss (and an all-masked batch divides by 1, not 0).
- A non-finite loss stops training with a clear message; weights are checked before every save.
- Checkpoints are written to a staging directory and renamed into place: never half-written. Every checkpoint
  and the final output directory hold our layout (`model.safetensors`, `config.json`, the tokenizer and prompt
  files, as `save_pretrained` writes them), so `tools/infer.py` reads them directly; next to it a checkpoint keeps
  paddlenlp's optimizer, scheduler, RNG and trainer state files.
"""

import math
import os
import shutil

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.io import DistributedBatchSampler
from paddlenlp.trainer import Trainer
from paddlenlp.trainer.trainer_utils import PREFIX_CHECKPOINT_DIR
from safetensors.paddle import load_file

from ..checkpoint import save_pretrained
from ..constants import SAFETENSORS_NAME
from ..errors import GOTError
from ..logger import logger
from ..modeling.got import causal_lm_loss_terms
from .lora import merged_state_dict


class GlobalBatchSampler(DistributedBatchSampler):
    """Seeded global batches of `batch_size * num_replicas` samples; each rank yields its `batch_size` slice.

    The last global batch is completed with samples from the start of the permutation.
    """

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True)
        self.seed = seed

    def __iter__(self):
        global_size = self.batch_size * self.nranks
        order = np.random.RandomState(self.seed + self.epoch).permutation(len(self.dataset))
        padding = -len(order) % global_size
        order = np.concatenate([order, order[:padding]])
        for start in range(0, len(order), global_size):
            mine = order[start + self.local_rank * self.batch_size : start + (self.local_rank + 1) * self.batch_size]
            yield mine.tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / (self.batch_size * self.nranks))


def parameters_are_finite(model) -> bool:
    """Whether every parameter of `model` is free of NaN and infinity."""
    return all(bool(paddle.isfinite(parameter).all()) for parameter in model.parameters())


class GOTTrainer(Trainer):
    """paddlenlp's Trainer for GOTQwenForCausalLM; `processor` files are saved with every checkpoint."""

    def __init__(self, *args, processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = processor
        self._writing_checkpoint = False

    def _get_train_sampler(self):
        return GlobalBatchSampler(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            num_replicas=max(self.args.dataset_world_size, 1),
            rank=max(self.args.dataset_rank, 0),
            seed=self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False):
        """Summed token loss / supervised tokens of the global batch, times the world size (DP averages it)."""
        outputs = model(
            input_ids=inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            attention_mask=inputs.get("attention_mask"),
        )
        total, count = causal_lm_loss_terms(outputs.logits, inputs["labels"])
        world_size = max(self.args.dataset_world_size, 1)
        if world_size > 1:
            count = count.detach().clone()
            dist.all_reduce(count)
        loss = total * world_size / paddle.clip(count, min=1.0)
        self._stop_if_not_finite(loss)
        return (loss, outputs) if return_outputs else loss

    def _stop_if_not_finite(self, loss: paddle.Tensor) -> None:
        value = loss.detach().clone()
        if max(self.args.dataset_world_size, 1) > 1:
            dist.all_reduce(value)
        if not math.isfinite(float(value)):
            raise GOTError(
                f"The training loss became {float(value)} at step {self.state.global_step + 1}: training stopped "
                "before saving non-finite weights (try a lower learning rate, or bf16 instead of fp16)."
            )

    def _save(self, output_dir=None, state_dict=None, merge_tensor_parallel=False):
        """Write model.safetensors, config.json and the tokenizer files into `output_dir`, atomically (our layout,
        as `save_pretrained` writes it).

        LoRA adapters stay unmerged in resume checkpoints and are merged into the weights of the final model.
        """
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self._unwrapped_model()
        if not parameters_are_finite(model):
            raise GOTError("The weights hold NaN or infinity: not saving them.")
        state = model.state_dict() if self._writing_checkpoint else merged_state_dict(model)
        save_pretrained(model, output_dir, state_dict=state, processor=self.processor)
        if not self._writing_checkpoint:
            logger.info(f"Saved the model to {output_dir}")

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        """Resume the weights from a checkpoint's model.safetensors (paddlenlp restores the optimizer, scheduler,
        RNG and trainer state from its own files next to it). Every rank reads the same file."""
        if resume_from_checkpoint is None:
            return
        path = os.path.join(resume_from_checkpoint, SAFETENSORS_NAME)
        if not os.path.isfile(path):
            raise GOTError(
                f"{resume_from_checkpoint} is not a checkpoint of this trainer: it has no {SAFETENSORS_NAME}."
            )
        logger.info(f"Loading the weights of {resume_from_checkpoint}")
        self._unwrapped_model().set_state_dict(load_file(path))

    def _unwrapped_model(self):
        return self.model._layers if isinstance(self.model, paddle.DataParallel) else self.model

    def _save_checkpoint(self, model, metrics=None):
        """paddlenlp's checkpoint (weights, optimizer, scheduler, RNG, state) staged, then renamed into place."""
        run_dir = self.args.output_dir
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f".staging-{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.args.output_dir = staging
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, metrics)
        finally:
            self.args.output_dir = run_dir
            self._writing_checkpoint = False
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            logger.info(f"Saved {final}")
            self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)
        if max(self.args.world_size, 1) > 1:
            dist.barrier()
