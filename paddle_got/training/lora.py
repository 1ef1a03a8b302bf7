"""LoRA on the decoder's projections (paddlenlp's LoRALinear), merged into plain weights for the final model.

Resume checkpoints keep the adapters unmerged (so training continues exactly); the final output directory holds
merged weights under the usual names, which `tools/infer.py` and `from_pretrained` read like any checkpoint.
"""

from typing import Dict

import paddle
from paddlenlp.peft.lora.lora_layers import LoRALinear

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model, rank: int, alpha: int) -> None:
    """Replace every decoder projection by a LoRALinear holding the same weights; only adapters train."""
    for layer in model.qwen2.layers:
        for block in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                linear = getattr(block, name, None)
                if linear is None:
                    continue
                in_features, out_features = linear.weight.shape
                adapter = LoRALinear(
                    in_features,
                    out_features,
                    r=rank,
                    lora_alpha=alpha,
                    bias_attr=False if linear.bias is None else None,
                )
                adapter.weight.set_value(linear.weight)
                if linear.bias is not None:
                    adapter.bias.set_value(linear.bias)
                setattr(block, name, adapter)
    for name, parameter in model.named_parameters():
        parameter.stop_gradient = ".lora_" not in name


def merged_state_dict(model) -> Dict[str, paddle.Tensor]:
    """The model's state dict with every adapter folded into its weight (W + A @ B * scale) and dropped."""
    state = dict(model.state_dict())
    for name, layer in model.named_sublayers():
        if isinstance(layer, LoRALinear):
            state[f"{name}.weight"] = layer.weight + paddle.matmul(layer.lora_A, layer.lora_B) * layer.scaling
            del state[f"{name}.lora_A"], state[f"{name}.lora_B"]
    return state
