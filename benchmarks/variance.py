"""Variance of each estimator's logit gradient at fixed parameters, at equal evaluations of f.

Problems:

- `toy`: the double-CV paper's quadratic `1/D E||b - t||^2` (D = 200, t = 0.499)
  at the logits 1000 RMSprop steps of RLOO reach (as in tests/test_estimators_variance.py);
- `vae`: a linear binary VAE 784-200 on the bundled MNIST subset, first trained
  with RLOO (K = 2) for `--pretrain-steps` steps, then frozen; the variance is
  per example and unit over draws, for `--images` fixed training images. With
  `--objective multi_sample`, the estimators of the K-sample bound (VIMCO,
  LocalDisARM) on its gradient;
- `vae2`: the same with two stochastic layers (784-200-200, `BinaryVAE`), the
  variance of each layer's per-example logit-bias gradient (layer 1: its logits;
  layer 2: the gradient reaching the encoder's layer-2 bias, the base chain's
  randomness included). At E evaluations of f per example: RLOO(E) (whole
  chains), and per layer double CV, RODEO and ARMS with K = E / 2, DisARM
  with E / 4 pairs.

Every one-layer comparison runs the registered estimators (`estimators_at`) at the
same number of evaluations of f per example (K samples; K/2 antithetic pairs;
MuProp's K - 1 samples and mean-field point; REBAR's and RELAX's K/3 samples and
their relaxed points); those that cannot run at a cost are left out of its rows.
Learned estimator state (double-CV alpha; RODEO alpha, beta and control network;
REBAR's temperature and eta, RELAX's network; NVIL's baseline and running moments)
is first learned at the frozen parameters with Adam (`--learn-lr`, `--learn-steps`,
batches of 100) on each estimator's own objective, as in training.

    python benchmarks/variance.py --problem toy --evaluations 2 3 4 6
    python benchmarks/variance.py --problem vae --objective multi_sample --evaluations 2 4 8
    python benchmarks/variance.py --problem vae2 --evaluations 4
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.estimators import ARMS, RLOO, RODEO, DisARM, Estimator, RLOODoubleCV, estimators_at
from discrete_vi.models import BinaryVAE
from discrete_vi.toy import quadratic_problem, train_toy

ROWS = ["RLOO", "Reinforce", "Reinforce+EMA", "NVIL", "MuProp", "RLOODoubleCV", "RODEO", "REBAR", "RELAX", "ARMS",
        "DisARM", "VIMCO", "LocalDisARM"]
"""The estimators measured, in the order printed (the first of them is the reference of the ratios)."""


@dataclass
class Problem:
    """A frozen objective to measure estimators on.

    inputs: n -> a batch of n training inputs (for learning the estimators' state).
    fixed: the inputs `[I, ...]` the variance is measured at.
    run: (estimator, inputs `[B, ...]`) -> (the estimator's loss, `sources`): per stochastic layer
        a list of tensors `[..., B, D_l]` whose gradients, summed over their leading dimensions and
        times `-B`, are the per-example estimates of `d E[f] / d` (that layer's logit bias).
    n_layers: stochastic layers.
    """

    inputs: Callable[[int], Tensor]
    fixed: Tensor
    run: Callable[[Estimator, Tensor], tuple[Tensor, list[list[Tensor]]]]
    n_layers: int = 1


def single_layer_run(logits_of: Callable[[Tensor], Tensor], f_of: Callable[[Tensor], Callable]):
    """`Problem.run` for one layer: the logits as a leaf, `f(samples, logits)` of the inputs (the
    logits the estimator hands it: detached for the ELBO's estimators, with their graph for the
    K-sample bound's), the estimate `-B * d loss / d logits`."""

    def run(estimator, x):
        leaf = logits_of(x).detach().clone().requires_grad_(True)
        return estimator.chain(leaf, [], f_of(x)).loss, [[leaf]]

    return run


def toy_problem() -> Problem:
    """The quadratic toy at the logits 1000 RMSprop steps of RLOO reach."""
    problem = quadratic_problem()
    logits = train_toy(problem, RLOO(2), steps=1000, measure_every=10**9, n_draws=2, seed=0).final_logits.unsqueeze(0)
    f = problem.objective()
    return Problem(lambda n: logits.expand(n, -1), logits,
                   single_layer_run(lambda x: x, lambda x: lambda samples, _logits: f(samples[0])))


def training_images(n_images: int) -> tuple[Tensor, Callable[[int], Tensor], Tensor]:
    """The bundled MNIST subset's training images in [0, 1], a sampler of dynamically binarized
    batches, and `n_images` fixed binarized images (seed 0)."""
    images = torch.from_numpy(load_mnist_subset()["train"]).float() / 255
    sample = lambda n: torch.bernoulli(images[torch.randint(0, len(images), (n,))])  # noqa: E731
    return images, sample, torch.bernoulli(images[:n_images], generator=torch.Generator().manual_seed(0))


def vae_problem(pretrain_steps: int, n_images: int, latent: int = 200, batch: int = 100) -> Problem:
    """A linear VAE 784-200 trained briefly with RLOO (K = 2), then frozen; f(samples, logits) =
    log p(x, b) - log q(b | logits)."""
    torch.manual_seed(0)
    _, sample, fixed = training_images(n_images)
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
        x = sample(batch)
        optimizer.zero_grad()
        estimator.chain(encoder(x), [], objective(x)).loss.backward()
        optimizer.step()
    for p in [*encoder.parameters(), *decoder.parameters(), prior]:
        p.requires_grad_(False)
    return Problem(sample, fixed, single_layer_run(encoder, objective))


def vae2_problem(pretrain_steps: int, n_images: int, batch: int = 100) -> Problem:
    """A two-layer linear `BinaryVAE` 784-200-200 trained briefly with RLOO (K = 2), then frozen.
    The estimates are per example for each layer's logit bias: layer 1's logits, and the sum over
    an estimator's chains of its gradient at the layer-2 logits that carry a graph (K whole chains
    for RLOO, the base chains for the per-layer schemes)."""
    torch.manual_seed(0)
    _, sample, fixed = training_images(n_images)
    model = BinaryVAE(estimator=RLOO(2), latent_sizes=(200, 200))
    model_params = [p for n, p in model.named_parameters() if not n.startswith("estimator.")]
    optimizer = torch.optim.Adam(model_params, lr=1e-3)
    for _ in range(pretrain_steps):
        optimizer.zero_grad()
        model.training_loss(sample(batch))[0].backward()
        optimizer.step()
    for p in model_params:
        p.requires_grad_(False)

    def run(estimator, x):
        first_logits, (layer,) = model.stochastic_layers(x)
        leaf = first_logits.detach().requires_grad_(True)
        captured = []

        def keeping(b):  # the layer-2 logits of the calls that carry a graph (not the completions)
            phi = layer(b)
            if torch.is_grad_enabled():
                phi = phi.detach().requires_grad_(True)
                captured.append(phi)
            return phi

        return estimator.chain(leaf, [keeping], partial(model.objective, x)).loss, [[leaf], captured]

    return Problem(sample, fixed, run, n_layers=2)


def learn_state(estimator: Estimator, problem: Problem, steps: int, lr: float, batch: int = 100) -> None:
    """Training calls at the frozen model: Adam on the estimator's own parameters (on its own
    objective), and the updates of its buffers (moving averages, running moments)."""
    estimator.prepare_layers(problem.n_layers)
    params = list(estimator.parameters())
    if not params and not any(True for _ in estimator.buffers()):
        return
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    for _ in range(steps):
        loss, _ = problem.run(estimator, problem.inputs(batch))
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def measure(estimator: Estimator, problem: Problem, draws: int, chunk: int) -> list[float]:
    """Per layer: the mean over the fixed inputs and units of the variance over `draws` estimates."""
    estimator.eval()
    per_layer = [[] for _ in range(problem.n_layers)]
    torch.manual_seed(1)
    n_inputs = problem.fixed.shape[0]
    for _ in range(draws // chunk):
        repeated = problem.fixed.repeat_interleave(chunk, 0)
        loss, sources = problem.run(estimator, repeated)
        flat = [t for layer in sources for t in layer]
        grads = iter(torch.autograd.grad(loss, flat))
        for layer, tensors in enumerate(sources):
            estimate = -repeated.shape[0] * sum(next(grads).reshape(-1, *t.shape[-2:]).sum(0) for t in tensors)
            per_layer[layer].append(estimate.view(n_inputs, chunk, -1))
    estimator.train()
    return [torch.cat(parts, 1).var(1).mean().item() for parts in per_layer]


def estimators_at_cost(evaluations: int, n_layers: int, objective: str, expansions: str) -> dict[str, Estimator]:
    """The compared estimators at `evaluations` evaluations of f per example and step. One layer:
    every registered one of `objective` that runs at that cost. Several: RLOO draws whole chains
    (K = evaluations); the per-layer schemes evaluate K per layer (2 per pair)."""
    if n_layers == 1:
        made = estimators_at(evaluations, objective)
        estimators = {name: made[name] for name in ROWS if name in made}
        if "RODEO" in estimators:
            estimators["RODEO"] = RODEO.at_cost(evaluations, expansions=expansions)
        return estimators
    k, remainder = divmod(evaluations, n_layers)
    if remainder or k % 2:
        raise SystemExit(f"--evaluations must be multiples of {2 * n_layers} for {n_layers} layers, got {evaluations}")
    return {
        "RLOO": RLOO(evaluations),
        "RLOODoubleCV": RLOODoubleCV(k),
        "RODEO": RODEO(k, expansions=expansions),
        "ARMS": ARMS(k),
        "DisARM": DisARM(k // 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=["toy", "vae", "vae2"], default="toy")
    parser.add_argument("--objective", choices=["elbo", "multi_sample"], default="elbo",
                        help="the training objective whose estimators are compared (multi_sample: one layer)")
    parser.add_argument("--evaluations", type=int, nargs="+", default=None,
                        help="evaluations of f per example and step (default: 2 4; vae2: 4 8)")
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--learn-lr", type=float, default=0.1)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--rodeo-expansions", choices=["all", "next"], default="all")
    parser.add_argument("--only", nargs="*", default=None, help="estimator names to run (default: all)")
    args = parser.parse_args(argv)
    if args.problem == "toy":
        problem = toy_problem()
    elif args.problem == "vae":
        problem = vae_problem(args.pretrain_steps, args.images)
    else:
        problem = vae2_problem(args.pretrain_steps, args.images)
    if problem.n_layers > 1 and args.objective != "elbo":
        parser.error("--objective multi_sample compares one-layer estimators: use --problem toy or vae")
    evaluations = args.evaluations or ([4, 8] if problem.n_layers > 1 else [2, 4])
    print(f"problem={args.problem} objective={args.objective} draws={args.draws} "
          f"learn: {args.learn_steps} Adam steps at lr {args.learn_lr}")
    layers = "".join(f"{f'var layer {l + 1}':>14}{'ratio':>9}" for l in range(problem.n_layers))
    print(f"{'estimator':<14}{'f evals':>8}{layers}  learned (ratio: to the first row)")
    for total in evaluations:
        reference = None
        for name, estimator in estimators_at_cost(total, problem.n_layers, args.objective,
                                                  args.rodeo_expansions).items():
            if args.only and name not in args.only and reference is not None:
                continue
            torch.manual_seed(2)
            start = time.perf_counter()
            learn_state(estimator, problem, args.learn_steps, args.learn_lr)
            variances = measure(estimator, problem, args.draws, args.chunk)
            reference = reference or variances
            columns = "".join(f"{v:>14.4e}{v / r:>9.3g}x" for v, r in zip(variances, reference))
            state = {n: round(v.item(), 4) for n, v in estimator.logged_state().items()}
            print(f"{name:<14}{total:>8}{columns}  {state or ''} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
