"""Image constants and per-batch operations on flattened 28x28 images."""

from __future__ import annotations

import torch

IMAGE_SHAPE: tuple[int, int] = (28, 28)
INPUT_SIZE: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 784 pixels per flattened image
GREY_LEVELS: int = 255  # uint8 grey level that means "pixel on with probability 1"


def sample_binary_images(grey_levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with P(1) = grey level / 255.

    ``grey_levels``: uint8 ``[..., 784]`` on any device. Returns float32 of the
    same shape and device holding exact 0/1 values. Without ``generator`` the
    draw uses torch's global RNG of that device (reproducible when the run is seeded).
    Grey levels 0 and 255 always give 0 and 1.
    """
    # r uniform on {0, ..., 254}: P(r < g) = g / 255 exactly, in uint8 (cheaper than a float uniform per pixel).
    draws = torch.randint(0, GREY_LEVELS, grey_levels.shape, dtype=torch.uint8, generator=generator,
                          device=grey_levels.device)
    return (draws < grey_levels).to(torch.float32)
