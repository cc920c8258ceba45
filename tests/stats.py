"""Statistical checks shared by the estimator tests."""

from __future__ import annotations

from torch import Tensor

# Two-sided z threshold per coordinate. The suite compares a few thousand
# coordinates; at 4.5 the chance that any correct one exceeds it is ~1%.
Z_THRESHOLD = 4.5


def z_scores(estimates: Tensor, exact: Tensor) -> Tensor:
    """|mean - exact| / standard error, per coordinate. estimates: [N, ...]; exact: [...]."""
    n = estimates.shape[0]
    mean = estimates.double().mean(0)
    standard_error = estimates.double().std(0) / n**0.5
    return (mean - exact.double()).abs() / standard_error.clamp_min(1e-12)


def max_z(estimates: Tensor, exact: Tensor) -> float:
    return z_scores(estimates, exact).max().item()
