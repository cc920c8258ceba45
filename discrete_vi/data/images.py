"""Image constants and per-batch operations on flattened 28x28 images."""

from __future__ import annotations

import torch

from discrete_vi.bernoulli import uniform

IMAGE_SHAPE: tuple[int, int] = (28, 28)
INPUT_SIZE: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 784 pixels per flattened image
GREY_LEVELS: int = 255  # uint8 grey level that means "pixel on with probability 1"


def sample_binary_images(grey_levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with P(1) = grey level / 255 (within 2^-16 on a CPU, 2^-24 elsewhere).

    ``grey_levels``: uint8 ``[..., 784]`` on any device. Returns float32 of the
    same shape and device holding exact 0/1 values. Without ``generator`` the
    draw uses torch's global RNG of that device (reproducible when the run is seeded).
    Grey levels 0 and 255 always give 0 and 1.
    """
    # 16-bit uniforms on a CPU (`uniform`: four per 64-bit draw, never 0 or 1): P(1) is g / 255
    # on a multiple of 2^-16, exact for 0 and 255.
    draws = uniform(grey_levels.shape, grey_levels.device, bits=16, generator=generator)
    return (draws < grey_levels / GREY_LEVELS).to(torch.float32)
