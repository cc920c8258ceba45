"""Variance of each estimator's logit gradient at fixed parameters, at equal evaluations of f.

Two problems:

- `toy`: the double-CV paper's quadratic `1/D E||b - t||^2` (D = 200, t = 0.499)
  at the logits 1000 RMSprop steps of RLOO reach (as in tests/test_estimators_variance.py);
- `vae`: a linear binary VAE 784-200 on the bundled MNIST subset, first trained
  with RLOO (K = 2) for `--pretrain-steps` steps, then frozen; the variance is
  per example and unit over draws, for `--images` fixed training images.

Learned estimator state (double-CV alpha; RODEO alpha, beta and control network;
REBAR's temperature and eta, RELAX's also its network) is first learned at the
frozen parameters with Adam (`--learn-lr`, `--learn-steps`, batches of 100) by
descending the estimate's second moment, as in training. At each number of
evaluations of f, only the estimators that run at it are measured (DisARM at even
ones, REBAR and RELAX, three evaluations per sample, at multiples of 3).

    python benchmarks/variance.py --problem toy --evaluations 2 3 4 6
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.checks import ConfigurationError
from discrete_vi.estimators import ARMS, RELAX, RLOO, RODEO, REBAR, DisARM, RLOODoubleCV
from discrete_vi.toy import quadratic_problem, train_toy


def toy_problem():
    """(logits [1, D], f, training batches) for the quadratic toy."""
    problem = quadratic_problem()
    logits = train_toy(problem, RLOO(2), steps=1000, measure_every=10**9, n_draws=2, seed=0).final_logits
    return logits.unsqueeze(0), (lambda x: problem.objective()), None


def vae_problem(pretrain_steps: int, latent: int = 200, batch: int = 100):
    """A linear VAE trained briefly with RLOO: (encoder, f-maker, training images)."""
    torch.manual_seed(0)
    images = torch.from_numpy(load_mnist_subset()["train"]).float() / 255
    encoder, decoder = nn.Linear(784, latent), nn.Linear(latent, 784)
    prior = nn.Parameter(torch.zeros(latent))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), prior], lr=1e-3)

    def objective(x):
        def f(b):
            log_px = -nn.functional.binary_cross_entropy_with_logits(
                decoder(b), x.expand(b.shape[0], -1, -1), reduction="none"
            ).sum(-1)
            return log_px + bernoulli_log_prob(b, prior) - bernoulli_log_prob(b, encoder(x).detach())

        return f

    estimator = RLOO(2)
    for _ in range(pretrain_steps):
        x = torch.bernoulli(images[torch.randint(0, len(images), (batch,))])
        optimizer.zero_grad()
        estimator(encoder(x), objective(x)).loss.backward()
        optimizer.step()
    for p in [*encoder.parameters(), *decoder.parameters(), prior]:
        p.requires_grad_(False)
    return encoder, objective, images


def learn_state(estimator, inputs, make_f, encoder, steps: int, lr: float, network_lr: float, batch: int = 100) -> None:
    """Adam on the estimator's own parameters (the second moment of its estimate), model frozen;
    a control network's weights at `network_lr`, its scalars at `lr`."""
    named = list(estimator.named_parameters())
    if not named:
        return
    groups = [{"params": [p for n, p in named if not n.startswith("network.")], "lr": lr},
              {"params": [p for n, p in named if n.startswith("network.")], "lr": network_lr}]
    optimizer = torch.optim.Adam([group for group in groups if group["params"]])
    for _ in range(steps):
        x = inputs(batch)
        logits = (encoder(x) if encoder is not None else x).clone().requires_grad_(True)
        optimizer.zero_grad()
        estimator(logits, make_f(x)).loss.backward()
        optimizer.step()


def measure(estimator, x, make_f, encoder, draws: int, chunk: int) -> float:
    """Mean over examples and units of the variance over `draws` estimates of the logit gradient."""
    estimator.eval()
    estimates = []
    torch.manual_seed(1)
    for _ in range(draws // chunk):
        repeated = x.repeat_interleave(chunk, 0)
        logits = (encoder(repeated) if encoder is not None else repeated).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimator(logits, make_f(repeated)).loss, logits)
        estimates.append((-grad * logits.shape[0]).view(x.shape[0], chunk, -1))
    estimator.train()
    return torch.cat(estimates, 1).var(1).mean().item()


def basket(n_evaluations: int, rodeo_expansions: str, relax_hidden: list[int]) -> dict:
    """The estimators compared at `n_evaluations` evaluations of f per example (those that run at it)."""
    makers = {
        "RLOO": lambda k: RLOO.at_cost(k),
        "RLOODoubleCV": lambda k: RLOODoubleCV.at_cost(k),
        "RODEO": lambda k: RODEO.at_cost(k, expansions=rodeo_expansions),
        "ARMS": lambda k: ARMS.at_cost(k),
        "DisARM": lambda k: DisARM.at_cost(k),
        "REBAR": lambda k: REBAR.at_cost(k),
        **{f"RELAX-h{h}" if len(relax_hidden) > 1 else "RELAX": lambda k, h=h: RELAX.at_cost(k, hidden_size=h)
           for h in relax_hidden},
    }
    made = {}
    for name, make in makers.items():
        try:
            made[name] = make(n_evaluations)
        except ConfigurationError:
            continue
    return made


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=["toy", "vae"], default="toy")
    parser.add_argument("--evaluations", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--learn-lr", type=float, default=0.1, help="Adam rate of learned scalars")
    parser.add_argument("--network-lr", type=float, default=None,
                        help="Adam rate of control networks (default: --learn-lr)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--rodeo-expansions", choices=["all", "next"], default="all")
    parser.add_argument("--relax-hidden", type=int, nargs="+", default=[137], help="RELAX network widths to compare")
    parser.add_argument("--only", nargs="*", default=None, help="estimator names to run (default: all)")
    args = parser.parse_args(argv)
    if args.problem == "toy":
        logits, make_f, images = toy_problem()
        encoder, x = None, logits
        inputs = lambda n: logits.expand(n, -1)  # noqa: E731
    else:
        encoder, make_f, images = vae_problem(args.pretrain_steps)
        x = torch.bernoulli(images[: args.images], generator=torch.Generator().manual_seed(0))
        inputs = lambda n: torch.bernoulli(images[torch.randint(0, len(images), (n,))])  # noqa: E731
    network_lr = args.learn_lr if args.network_lr is None else args.network_lr
    print(f"problem={args.problem} draws={args.draws} learn: {args.learn_steps} Adam steps at lr {args.learn_lr}"
          f" (networks: {network_lr})")
    print(f"{'estimator':<14}{'f evals':>8}{'variance':>14}{'vs RLOO':>11}  learned")
    for k in args.evaluations:
        estimators = basket(k, args.rodeo_expansions, args.relax_hidden)
        rloo = None
        for name, estimator in estimators.items():
            if args.only and name not in args.only and name != "RLOO":
                continue
            torch.manual_seed(2)
            start = time.perf_counter()
            learn_state(estimator, inputs, make_f, encoder, args.learn_steps, args.learn_lr, network_lr)
            variance = measure(estimator, x, make_f, encoder, args.draws, args.chunk)
            rloo = variance if name == "RLOO" else rloo
            state = {n: round(v.item(), 4) for n, v in estimator.logged_state().items()}
            print(
                f"{name:<14}{k:>8}{variance:>14.4e}{variance / rloo:>10.4g}x  {state or ''}"
                f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
