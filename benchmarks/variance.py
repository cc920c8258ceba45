"""Variance of each estimator's logit gradient at fixed parameters, at equal evaluations of f.

`--objective elbo` (default) measures the ELBO's estimators (RLOO, double CV, RODEO, ARMS,
DisARM); `--objective multi_sample` those of the multi-sample bound on their own objective:
VIMCO with K = n samples against LocalDisARM with K = n/2 antithetic pairs (n evaluations of f
each, the DisARM paper's comparison: VIMCO's bound has twice the samples), on the `vae` problem
(its f is a log weight, whose -log q term's direct derivative is part of the bound's gradient).

Two problems:

- `toy`: the double-CV paper's quadratic `1/D E||b - t||^2` (D = 200, t = 0.499)
  at the logits 1000 RMSprop steps of RLOO reach (as in tests/test_estimators_variance.py);
- `vae`: a linear binary VAE 784-200 on the bundled MNIST subset, first trained
  with RLOO (K = 2) for `--pretrain-steps` steps, then frozen; the variance is
  per example and unit over draws, for `--images` fixed training images.

Learned estimator state (double-CV alpha; RODEO alpha, beta and control network;
NVIL's baseline network and running moments) is first learned at the frozen
parameters with Adam (`--learn-lr`, `--learn-steps`, batches of 100) on each
estimator's own objective (the estimate's second moment; NVIL: the baseline's
squared error), as in training.

Every estimator runs at the same number of evaluations of f per example: K
samples (REINFORCE with and without its moving-average baseline, NVIL, RLOO,
double CV, RODEO, ARMS), K/2 antithetic pairs (DisARM), K - 1 samples and the
mean-field point (MuProp); those that cannot run at a cost (DisARM at an odd one,
RLOO and MuProp at one) are left out of its rows.

    python benchmarks/variance.py --problem toy --evaluations 2 3 4 6
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.diagnostics import logit_estimates
from discrete_vi.estimators import RLOO, RODEO, estimators_at
from discrete_vi.toy import quadratic_problem, train_toy

ROWS = ["RLOO", "Reinforce", "Reinforce+EMA", "NVIL", "MuProp", "RLOODoubleCV", "RODEO", "REBAR", "RELAX", "ARMS", "DisARM"]
"""The estimators measured, in the order printed (RLOO first: the others' ratios are to it)."""


def toy_problem():
    """(logits [1, D], f-maker, training batches) for the quadratic toy; f(samples, logits)."""
    problem = quadratic_problem()
    logits = train_toy(problem, RLOO(2), steps=1000, measure_every=10**9, n_draws=2, seed=0).final_logits
    objective = problem.objective()
    return logits.unsqueeze(0), (lambda x: lambda samples, _logits: objective(samples[0])), None


def vae_problem(pretrain_steps: int, latent: int = 200, batch: int = 100):
    """A linear VAE trained briefly with RLOO: (encoder, f-maker, training images). The f-maker
    gives f(samples, logits) = log p(x, b) - log q(b | logits), with the logits the estimator
    hands it (detached for the ELBO, with their graph for the multi-sample bound)."""
    torch.manual_seed(0)
    images = torch.from_numpy(load_mnist_subset()["train"]).float() / 255
    encoder, decoder = nn.Linear(784, latent), nn.Linear(latent, 784)
    prior = nn.Parameter(torch.zeros(latent))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), prior], lr=1e-3)

    def objective(x):
        def f(samples, logits):
            b = samples[0]
            log_px = -nn.functional.binary_cross_entropy_with_logits(
                decoder(b), x.expand(b.shape[0], -1, -1), reduction="none"
            ).sum(-1)
            return log_px + bernoulli_log_prob(b, prior) - bernoulli_log_prob(b, logits[0])

        return f

    estimator = RLOO(2)
    for _ in range(pretrain_steps):
        x = torch.bernoulli(images[torch.randint(0, len(images), (batch,))])
        optimizer.zero_grad()
        estimator.chain(encoder(x), [], objective(x)).loss.backward()
        optimizer.step()
    for p in [*encoder.parameters(), *decoder.parameters(), prior]:
        p.requires_grad_(False)
    return encoder, objective, images


def learn_state(estimator, inputs, make_f, encoder, steps: int, lr: float, batch: int = 100) -> None:
    """Training calls at the frozen model: Adam on the estimator's own parameters (on its own
    objective), and the updates of its buffers (moving averages, running moments)."""
    params = list(estimator.parameters())
    if not params and not any(True for _ in estimator.buffers()):
        return
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    for _ in range(steps):
        x = inputs(batch)
        logits = (encoder(x) if encoder is not None else x).clone().requires_grad_(True)
        loss = estimator.chain(logits, [], make_f(x)).loss
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def measure(estimator, x, make_f, encoder, draws: int, chunk: int) -> float:
    """Mean over examples and units of the variance over `draws` estimates of the logit gradient."""
    estimates = []
    torch.manual_seed(1)
    for _ in range(draws // chunk):
        repeated = x.repeat_interleave(chunk, 0)
        logits = encoder(repeated) if encoder is not None else repeated
        f = make_f(repeated)
        g = logit_estimates(estimator, logits, f)
        estimates.append(g.view(x.shape[0], chunk, -1))
    return torch.cat(estimates, 1).var(1).mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=["toy", "vae"], default="toy")
    parser.add_argument("--objective", choices=["elbo", "multi_sample"], default="elbo",
                        help="the estimators of this training objective, each measured on it")
    parser.add_argument("--evaluations", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--learn-lr", type=float, default=0.1)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--rodeo-expansions", choices=["all", "next"], default="all")
    parser.add_argument("--only", nargs="*", default=None, help="estimator names to run (default: all)")
    args = parser.parse_args(argv)
    if args.objective == "multi_sample" and args.problem != "vae":
        parser.error("--objective multi_sample needs --problem vae (an f that is a log importance weight)")
    if args.objective == "multi_sample" and any(k < 2 or k % 2 for k in args.evaluations):
        parser.error("--objective multi_sample: --evaluations must be even numbers >= 2 (LocalDisARM's pairs)")
    if args.problem == "toy":
        logits, make_f, images = toy_problem()
        encoder, x = None, logits
        inputs = lambda n: logits.expand(n, -1)  # noqa: E731
    else:
        encoder, make_f, images = vae_problem(args.pretrain_steps)
        x = torch.bernoulli(images[: args.images], generator=torch.Generator().manual_seed(0))
        inputs = lambda n: torch.bernoulli(images[torch.randint(0, len(images), (n,))])  # noqa: E731
    reference = "RLOO" if args.objective == "elbo" else "VIMCO"
    print(f"problem={args.problem} objective={args.objective} draws={args.draws} "
          f"learn: {args.learn_steps} Adam steps at lr {args.learn_lr}")
    print(f"{'estimator':<14}{'f evals':>8}{'bound K':>8}{'variance':>14}{'vs ' + reference:>10}  learned")
    for k in args.evaluations:
        made = estimators_at(k, args.objective)  # those that cannot run at k evaluations are left out
        estimators = {name: made[name] for name in (ROWS if args.objective == "elbo" else made) if name in made}
        if "RODEO" in estimators:
            estimators["RODEO"] = RODEO.at_cost(k, expansions=args.rodeo_expansions)
        rloo = None
        for name, estimator in estimators.items():
            if args.only and name not in args.only and name != reference:
                continue
            torch.manual_seed(2)
            start = time.perf_counter()
            learn_state(estimator, inputs, make_f, encoder, args.learn_steps, args.learn_lr)
            variance = measure(estimator, x, make_f, encoder, args.draws, args.chunk)
            rloo = variance if name == reference else rloo
            state = {n: round(v.item(), 4) for n, v in estimator.logged_state().items()}
            bound_k = estimator.n_samples if estimator.training_objective == "multi_sample" else "-"
            print(
                f"{name:<14}{k:>8}{bound_k:>8}{variance:>14.4e}{variance / rloo:>9.3f}x  {state or ''}"
                f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
