"""The toy problems of the ARM and double-control-variate papers.

- `single-unit`: maximise `E[(b - p0)^2]` for one Bernoulli unit (ARM paper).
- `quadratic`: maximise `1/D E ||b - t||^2`, D = 200, t = 0.499 (Titsias & Shi).

Each ELBO estimator (the toys are `E[f]` problems) trains `phi` (starting at 0) with RMSprop; every
`measure_every` steps the gradient variance is measured at the current,
fixed parameters from `n_draws` independent estimates. Run it as

    discrete-vi-toy quadratic            # or: python -m discrete_vi.toy single-unit --p0 0.49

It prints a table (final exact loss, variance at the start, middle and end)
and, when matplotlib is installed, writes a PNG of variance over training.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from discrete_vi.diagnostics import logit_estimates
from discrete_vi.estimators import Estimator, estimators_at


def quadratic_objective(target: float) -> Callable[[Tensor], Tensor]:
    """`f(b) = 1/D ||b - t||^2`: samples `[K, B, D]` -> `[K, B]`."""
    return lambda samples: ((samples - target) ** 2).mean(-1)


def quadratic_expectation(logits: Tensor, target: float) -> Tensor:
    """Exact `1/D E ||b - t||^2` for logits `[..., D]` -> `[...]`."""
    theta = torch.sigmoid(logits)
    return (theta * (1 - target) ** 2 + (1 - theta) * target**2).mean(-1)


@dataclass
class ToyProblem:
    """A toy objective over `n_units` independent Bernoulli units."""

    name: str
    n_units: int
    target: float

    def objective(self) -> Callable[[Tensor], Tensor]:
        return quadratic_objective(self.target)

    def expectation(self, logits: Tensor) -> Tensor:
        return quadratic_expectation(logits, self.target)


def single_unit_problem(p0: float = 0.49) -> ToyProblem:
    """ARM's toy: one unit, `f(b) = (b - p0)^2`; exact gradient `(1 - 2 p0) theta (1 - theta)`."""
    return ToyProblem(f"single unit, p0={p0}", 1, p0)


def quadratic_problem(n_units: int = 200, target: float = 0.499) -> ToyProblem:
    """The double-CV paper's toy: `1/D ||b - t||^2`, D = 200, t = 0.499."""
    return ToyProblem(f"quadratic, D={n_units}, t={target}", n_units, target)


def gradient_estimates(estimator: Estimator, logits: Tensor, f: Callable[[Tensor], Tensor], n_draws: int) -> Tensor:
    """`n_draws` independent estimates `g` at fixed logits `[D]`: `[n_draws, D]`.

    The draws are the examples of one batched call at the estimator's current
    state (alpha, baseline), which is not updated here (eval mode).
    """
    return logit_estimates(estimator, logits.detach().expand(n_draws, -1), lambda samples, _logits: f(samples[0]))


def gradient_variance(estimator: Estimator, logits: Tensor, f: Callable[[Tensor], Tensor], n_draws: int) -> float:
    """Per-unit variance of the estimate over `n_draws` draws, averaged over units."""
    return gradient_estimates(estimator, logits, f, n_draws).var(0).mean().item()


@dataclass
class ToyHistory:
    """Measurements of one training run."""

    steps: list[int] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    final_logits: Tensor | None = None


def train_toy(
    problem: ToyProblem,
    estimator: Estimator,
    steps: int = 2000,
    lr: float = 0.01,
    measure_every: int = 10,
    n_draws: int = 2000,
    seed: int = 0,
) -> ToyHistory:
    """Train `phi` (from 0) with RMSprop to maximise the toy objective; measure variance on the way.

    The estimator's own parameters (double-CV alpha) learn with Adam at `estimator.lr`.
    `final_loss` is the exact `-E[f]` at the end, `final_logits` the `[D]` logits there.
    """
    torch.manual_seed(seed)
    f = problem.objective()
    phi = torch.zeros(1, problem.n_units, requires_grad=True)
    optimizer = torch.optim.RMSprop([phi], lr=lr)
    estimator_params = list(estimator.parameters())
    estimator_optimizer = torch.optim.Adam(estimator_params, lr=estimator.lr) if estimator_params else None
    history = ToyHistory()
    for step in range(steps + 1):
        if step % measure_every == 0 or step == steps:
            history.steps.append(step)
            history.variances.append(gradient_variance(estimator, phi[0], f, n_draws))
        if step == steps:
            break
        optimizer.zero_grad()
        if estimator_optimizer:
            estimator_optimizer.zero_grad()
        estimator(phi, f).loss.backward()
        optimizer.step()
        if estimator_optimizer:
            estimator_optimizer.step()
    with torch.no_grad():
        history.final_loss = -problem.expectation(phi[0]).item()
        history.final_logits = phi[0].detach().clone()
    return history


def format_table(problem: ToyProblem, results: dict[str, ToyHistory]) -> str:
    """A plain-text table of final loss and variance at start, middle and end."""
    lines = [
        f"toy problem: {problem.name}",
        f"{'estimator':<16}{'final loss':>14}{'var@start':>12}{'var@middle':>12}{'var@end':>12}",
    ]
    for name, h in results.items():
        mid = len(h.variances) // 2
        lines.append(
            f"{name:<16}{h.final_loss:>14.6f}{h.variances[0]:>12.3e}{h.variances[mid]:>12.3e}{h.variances[-1]:>12.3e}"
        )
    return "\n".join(lines)


def plot_variances(problem: ToyProblem, results: dict[str, ToyHistory], path: Path) -> bool:
    """Write a log-scale plot of variance over steps; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in results.items():
        ax.plot(h.steps, h.variances, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient variance (mean over units)")
    ax.set_title(problem.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, ToyHistory]:
    parser = argparse.ArgumentParser(prog="discrete-vi-toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("problem", choices=["quadratic", "single-unit"])
    parser.add_argument("--p0", type=float, default=0.49, help="single-unit target (0.49, 0.499, 0.501, 0.51)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.01, help="RMSprop learning rate for phi")
    parser.add_argument("--evaluations", type=int, default=2, help="evaluations of f per step (K, or 2 per pair)")
    parser.add_argument("--measure-every", type=int, default=10)
    parser.add_argument("--draws", type=int, default=2000, help="independent estimates per variance measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: toy_<problem>.png)")
    args = parser.parse_args(argv)
    for name in ("steps", "evaluations", "measure_every", "draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.evaluations % 2:
        parser.error("--evaluations must be even, so that ARM/DisARM (2 per pair) cost the same as the others")
    problem = quadratic_problem() if args.problem == "quadratic" else single_unit_problem(args.p0)
    results = {
        name: train_toy(problem, estimator, args.steps, args.lr, args.measure_every, args.draws, args.seed)
        for name, estimator in estimators_at(args.evaluations, "elbo").items()
    }
    print(format_table(problem, results))
    plot_path = args.plot or Path(f"toy_{args.problem}.png")
    if plot_variances(problem, results, plot_path):
        print(f"plot written to {plot_path}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
