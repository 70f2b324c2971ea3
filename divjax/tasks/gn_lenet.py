"""GN-LeNet, the reference's CIFAR-10 model (``datasets/CIFAR10.py::LeNet``), with PyTorch's initialisation.

Three 5x5 "same" convolutions (3->32, 32->32, 32->64), each followed by GroupNorm(2 groups, eps 1e-5), ReLU
and 2x2 max-pooling, then a linear layer 1024 -> 10: 89,834 parameters (conv1 2,432; gn1 64; conv2 25,632;
gn2 64; conv3 51,264; gn3 128; fc1 10,250). Inputs are NHWC images in [-1, 1].

Two interchangeable convolution implementations compute the same function with the same parameters:

* ``conv="xla"``: ``lax.conv_general_dilated``. Under ``vmap`` over nodes it becomes a grouped convolution,
  which GPUs run natively but XLA's CPU backend runs several times slower per node.
* ``conv="im2col"``: the 25 shifted slices of the padded input, concatenated, times the kernel as one
  matrix. Under ``vmap`` this is a batched matmul, the fastest stacked form on CPU (DESIGN.md §7).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL = 5
CLASSES = 10
CHANNELS = (32, 32, 64)


def torch_kernel_init() -> Callable:
    """PyTorch's default for conv and linear weights, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _im2col_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 "same" convolution of NHWC ``x`` with an HWIO ``kernel``, as one matrix product."""
    k = kernel.shape[0]
    pad = k // 2
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + height, j:j + width, :] for i in range(k) for j in range(k)],
                              axis=-1)  # [N, H, W, k*k*C] in (kh, kw, c) order, as kernel.reshape
    return patches @ kernel.reshape(-1, kernel.shape[-1])


class SameConv(nn.Module):
    """A 5x5 stride-1 "same" convolution with PyTorch's initialisation and a choice of implementation."""

    features: int
    conv: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * KERNEL * KERNEL
        kernel = self.param("kernel", torch_kernel_init(), (KERNEL, KERNEL, x.shape[-1], self.features))
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        if self.conv == "im2col":
            y = _im2col_same(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class GNLeNet(nn.Module):
    conv: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for features in CHANNELS:
            x = SameConv(features, self.conv)(x)
            x = nn.GroupNorm(num_groups=2, epsilon=1e-5)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        fan_in = x.shape[-1]
        return nn.Dense(CLASSES, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(fan_in))(x)
