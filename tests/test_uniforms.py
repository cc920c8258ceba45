"""The uniforms behind every sample and binarized pixel (`discrete_vi.bernoulli.uniform`)."""

import math

import pytest
import torch

from discrete_vi.bernoulli import draw_bernoulli, smallest_view, uniform
from discrete_vi.data.images import sample_binary_images

N = 2_000_000


@pytest.mark.parametrize("bits", [16, 24])
def test_uniforms_lie_on_their_grid_and_have_uniform_moments(bits):
    torch.manual_seed(0)
    u = uniform((N,), bits=bits)
    assert u.dtype == torch.float32 and u.shape == (N,)
    grid = u.double() * 2**bits - (0.5 if bits == 16 else 0.0)
    assert torch.equal(grid, grid.round())  # k / 2^24 or (k + 1/2) / 2^16, exactly
    assert 0.0 <= u.min() and u.max() < 1.0
    if bits == 16:
        assert u.min() > 0.0  # never 0 or 1: P(u < 0) = 0 and P(u < 1) = 1
    # mean 1/2 (s.d. of the mean 1/sqrt(12 N)), variance 1/12, and the 10 deciles 1/10 each: 5 s.d.
    assert abs(u.double().mean() - 0.5) < 5 / math.sqrt(12 * N)
    assert abs(u.double().var() - 1 / 12) < 5 * math.sqrt(1 / 180 / N)
    counts = torch.bincount((u * 10).long(), minlength=10).double()
    assert torch.all((counts / N - 0.1).abs() < 5 * math.sqrt(0.09 / N))


def test_uniforms_of_consecutive_values_are_uncorrelated():
    """Values split from one 64-bit draw must not be related: lag-1 to lag-3 correlations ~ 0."""
    torch.manual_seed(1)
    for bits in (16, 24):
        u = uniform((N,), bits=bits).double() - 0.5
        for lag in (1, 2, 3):
            correlation = (u[:-lag] * u[lag:]).mean() / u.var()
            assert abs(correlation) < 5 / math.sqrt(N), (bits, lag)


def test_uniforms_follow_the_seed_and_the_generator():
    torch.manual_seed(3)
    a = uniform((5, 7))
    torch.manual_seed(3)
    assert torch.equal(a, uniform((5, 7)))
    g = torch.Generator().manual_seed(3)
    b = uniform((5, 7), bits=16, generator=g)
    assert torch.equal(b, uniform((5, 7), bits=16, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="bits must be 16 or 24"):
        uniform((3,), bits=8)


def test_binarized_pixels_are_on_with_probability_grey_over_255():
    """Every grey level at once: P(1) within 2^-16 of g / 255 (plus 5 binomial s.d. of 20,000 draws);
    levels 0 and 255 exactly."""
    torch.manual_seed(2)
    levels = torch.arange(256, dtype=torch.uint8)
    draws = 20_000
    frequency = sample_binary_images(levels.expand(draws, -1)).double().mean(0)
    p = levels.double() / 255
    assert frequency[0] == 0.0 and frequency[255] == 1.0
    tolerance = 2.0**-16 + 5 * torch.sqrt(p * (1 - p) / draws)
    assert torch.all((frequency - p).abs() <= tolerance), (frequency - p).abs().max()


def test_samples_from_expanded_logits_equal_those_from_full_logits():
    """draw_bernoulli takes the sigmoid of expanded logits once; the samples are the same."""
    logits = torch.randn(4, 6)
    torch.manual_seed(4)
    expanded, _ = draw_bernoulli(logits.expand(3, 4, 6))
    torch.manual_seed(4)
    full, _ = draw_bernoulli(logits.expand(3, 4, 6).contiguous())
    assert torch.equal(expanded, full)
    assert smallest_view(logits.expand(3, 4, 6)).shape == (1, 4, 6)
