"""Time one training step of each estimator on a VAE-like objective.

Linear encoder 784 -> 200 and decoder 200 -> 784, learned prior logits,
batch 100, Adam; f(b) = log p(x | b) + log p(b) - log q(b | x) with the logits
the estimator hands f (detached for the ELBO's estimators, with their graph for
the multi-sample bound's VIMCO and LocalDisARM, whose backward then includes the
direct derivative). Estimators are compared at equal evaluations of f (K samples
or K/2 pairs). Steps are timed in interleaved rounds (every estimator once
per round) and the median per estimator is reported, with its ratio to RLOO
at the same number of evaluations, all from this one run.

    python benchmarks/estimators.py [--evaluations 2 3 6] [--rounds 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from discrete_vi.estimators import estimators_at
from discrete_vi.bernoulli import bernoulli_log_prob


class StepRunner:
    """One estimator with its own linear VAE and optimizer."""

    def __init__(self, estimator, x: torch.Tensor, latent: int = 200):
        pixels = x.shape[1]
        self.x = x
        self.estimator = estimator.to(x.device)
        self.encoder = nn.Linear(pixels, latent).to(x.device)
        self.decoder = nn.Linear(latent, pixels).to(x.device)
        self.prior_logits = nn.Parameter(torch.zeros(latent, device=x.device))
        params = [*self.encoder.parameters(), *self.decoder.parameters(), self.prior_logits]
        groups = [{"params": params, "lr": 1e-3}]
        if list(estimator.parameters()):
            groups.append({"params": list(estimator.parameters()), "lr": estimator.lr})
        self.optimizer = torch.optim.Adam(groups)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.encoder(self.x)

        def f(samples, q_logits):
            b = samples[0]
            log_px = -nn.functional.binary_cross_entropy_with_logits(
                self.decoder(b), self.x.expand(b.shape[0], -1, -1), reduction="none"
            ).sum(-1)
            return log_px + bernoulli_log_prob(b, self.prior_logits) - bernoulli_log_prob(b, q_logits[0])

        self.estimator.chain(logits, [], f).loss.backward()
        self.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(evaluations: list[int], rounds: int, steps_per_round: int, device: torch.device, batch: int = 100,
              only: list[str] | None = None):
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((batch, 784), 0.13, device=device))
    runners = {(k, name): StepRunner(est, x) for k in evaluations for name, est in estimators_at(k).items()
               if only is None or name in only or name == "RLOO"}
    times = {key: [] for key in runners}
    for runner in runners.values():  # warm-up
        for _ in range(3):
            runner.step()
    for _ in range(rounds):
        for key, runner in runners.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                runner.step()
            synchronize(device)
            times[key].append((time.perf_counter() - start) / steps_per_round * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, nargs="+", default=[2, 4],
                        help="evaluations of f per example and step (>= 2; RLOO is the reference at each)")
    parser.add_argument("--only", nargs="*", default=None, help="estimator labels to time besides RLOO (default: all)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.evaluations):
        parser.error("--evaluations must be >= 1")
    device = torch.device(args.device)
    medians = benchmark(args.evaluations, args.rounds, args.steps_per_round, device, only=args.only)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} batch=100 latent=200")
    print(f"{'estimator':<16}{'f evals':>8}{'ms/step':>10}{'vs RLOO':>9}")
    for (k, name), ms in medians.items():
        rloo = medians.get((k, "RLOO"))
        print(f"{name:<16}{k:>8}{ms:>10.3f}" + (f"{ms / rloo:>8.2f}x" if rloo else "       -"))


if __name__ == "__main__":
    main()
