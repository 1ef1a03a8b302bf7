"""Linear layers on feature-major activations `[N, features, L]`, through matmul's transpose flags.

Paddle's CPU copies of permuted tensors are slow (a `[8, 300, 16, 64]` head transpose takes ~28 ms), so both
attentions keep their heads feature-major and enter and leave that layout with these two products, never a permute.
A wrapped projection (e.g. LoRA adapters during training) runs its own forward and is transposed.
"""

import paddle
import paddle.nn as nn

from ..kernels import decode_cpu


def linear_to_feature_major(linear: nn.Layer, hidden_states: paddle.Tensor) -> paddle.Tensor:
    """`linear(hidden_states)` for `[N, L, in]`, returned feature-major: `[N, out, L]`."""
    if type(linear) is not nn.Linear:
        return linear(hidden_states).transpose([0, 2, 1])
    if decode_cpu.bfloat16_gemm_applies(linear, hidden_states, hidden_states.shape[0] * hidden_states.shape[1]):
        return decode_cpu.bfloat16_linear(linear, hidden_states, out_feature_major=True)
    weight = decode_cpu.weight_in(linear.weight, hidden_states)
    projected = paddle.matmul(weight, hidden_states, transpose_x=True, transpose_y=True)
    return projected if linear.bias is None else decode_cpu.plus_bias(projected, linear.bias, feature_major=True)


def linear_from_feature_major(linear: nn.Layer, features: paddle.Tensor) -> paddle.Tensor:
    """`linear` applied to feature-major `[N, in, L]`; returns `[N, L, out]`."""
    if type(linear) is not nn.Linear:
        return linear(features.transpose([0, 2, 1]))
    if decode_cpu.bfloat16_gemm_applies(linear, features, features.shape[0] * features.shape[2]):
        return decode_cpu.bfloat16_linear(linear, features, activations_feature_major=True)
    output = paddle.matmul(features, decode_cpu.weight_in(linear.weight, features), transpose_x=True)
    return output if linear.bias is None else decode_cpu.plus_bias(output, linear.bias)
