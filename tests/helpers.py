"""What the tests share (fixtures built on these live in conftest.py):

- the statistics of the unbiasedness checks (`max_z`);
- the table of estimator cases, generated from the registry (`ESTIMATOR_CASES`): every
  registered estimator (and variant) at several costs, with the training objective it estimates
  (the ELBO or the K-sample bound), its learned state moved away from its initial values, so a
  new estimator is checked for the contract, unbiasedness against its objective's oracle, chains,
  command-line training and compilation without editing any list;
- the enumeration problems (`estimated_single_layer`, `estimated_multi_sample`, `estimated_chain`) and
  the exact gradients of the K-sample bound (`exact_multi_sample_gradients`, `exact_chain_bound_gradients`);
- the command line's small run (`TINY`, `SMALL_EVAL`) and TensorBoard readers.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.checks import ConfigurationError
from discrete_vi.estimators import ESTIMATORS, Estimator, estimator_labels
from discrete_vi.exact import MAX_BITS, exact_chain_bound

# --- statistics ---------------------------------------------------------------------------

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


# --- the estimator cases, from the registry ------------------------------------------------

COSTS = (1, 2, 3, 4, 5, 6)
"""Evaluations of f per example at which every estimator is checked (where it accepts them)."""


def randomised(estimator: Estimator, seed: int) -> Estimator:
    """`estimator` with its learned state away from initialisation: every floating-point
    parameter and buffer moved by a standard normal draw, every integer buffer (a step count)
    by one. Unbiasedness must not depend on the state."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*estimator.parameters(), *estimator.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=g))
            else:
                tensor.add_(1)
    return estimator


HEAVY_TAILED_REPLICAS = {"MuProp": 2_000_000}
"""Replicas for the single-layer z-test of estimators whose estimate has rare, large values that
carry a measurable part of its mean, so that the sample holds enough of them for the sample mean
and its standard error to be trustworthy (more replicas: a stricter test, not a looser one).

MuProp: at the single-layer problem's saturated example (|phi| ~ 6) the first-order Taylor control
is poor where two saturated units flip at once (probability ~1e-5). That outcome carries ~0.7% of a
logit's gradient (1.7e-5 of 2.3e-3, by enumeration), while 20,000 replicas give a standard error of
3e-6 and usually hold no such draw: a false alarm at z ~ 5-9. With 2,000,000 replicas the sample
holds ~20 of them and the standard error includes their spread (measured z <= 2.6 at K = 1, 2, 5).
The chain problem has no such outcome (measured z <= 3.1 at 20,000 and 400,000 replicas)."""

SAMPLES_DRAWN: dict[str, Callable[[Estimator], int]] = {
    name: (lambda estimator: estimator.n_samples) for name in ("MuProp", "REBAR", "RELAX")}
"""Samples of q per example in one call, where not every evaluation of f is one (MuProp also
evaluates f at the mean-field point, REBAR and RELAX at two relaxed points per sample: their
values are not in `out.f_values`)."""


def drawn_samples(estimator: Estimator) -> int:
    """The rows of `out.f_values` and `out.samples` of a one-layer call."""
    return SAMPLES_DRAWN.get(type(estimator).__name__, lambda e: e.n_evaluations)(estimator)


@dataclass(frozen=True)
class EstimatorCase:
    """One registered estimator (or variant) at one cost."""

    id: str
    name: str
    cost: int
    build: Callable[[], Estimator]

    def make(self, n_layers: int = 1) -> Estimator:
        """A fresh instance prepared for `n_layers` stochastic layers, learned state (every layer's)
        randomised (the same for every call: networks are initialised from a seed of their own,
        the caller's random stream left as it was)."""
        seed = zlib.crc32(self.id.encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            estimator = self.build()
            estimator.prepare_layers(n_layers)
            return randomised(estimator, seed)

    @property
    def cls(self) -> type[Estimator]:
        return ESTIMATORS[self.name]

    @property
    def replicas(self) -> int:
        """Independent estimates the single-layer enumeration z-test draws for this case."""
        return HEAVY_TAILED_REPLICAS.get(self.name, N_REPLICAS)

    @property
    def chunks(self) -> int:
        """Calls the estimates are drawn in (bounds memory: about 20,000 replicas x cost per call)."""
        return max(self.cost, self.cost * self.replicas // N_REPLICAS)

    @property
    def objective(self) -> str:
        """The training objective the estimator estimates the gradient of ("elbo", "multi_sample")."""
        return self.cls.training_objective

    @property
    def bound_samples(self) -> int:
        """K of the K-sample bound it trains (1 for the ELBO): the exact oracle enumerates K-tuples."""
        return 1 if self.objective == "elbo" else self.build().n_samples


def registry_cases() -> list[EstimatorCase]:
    """Every registered estimator and variant at every cost of `COSTS` it accepts."""
    cases = []
    for label, (name, options) in estimator_labels().items():
        for cost in COSTS:
            try:
                ESTIMATORS[name].at_cost(cost, **options)
            except ConfigurationError:
                continue  # e.g. an odd cost for antithetic pairs, one sample for RLOO
            build = lambda name=name, cost=cost, options=options: ESTIMATORS[name].at_cost(cost, **options)  # noqa: E731
            cases.append(EstimatorCase(f"{label}-{cost}", name, cost, build))
    return cases


ESTIMATOR_CASES = registry_cases()
UNBIASED_CASES = [case for case in ESTIMATOR_CASES if not case.cls.biased]
CHAIN_BITS = 6
"""Latent bits of the two-layer chain problem (3 + 3): K-tuples of chains enumerate up to K = 3."""
CHAIN_CASES = [case for case in UNBIASED_CASES
               if case.cls.supports_chains and case.bound_samples * CHAIN_BITS <= MAX_BITS]
# One case per registered estimator and variant, at the smallest cost it accepts from 2 up.
ONE_PER_ESTIMATOR = list({case.id.rsplit("-", 1)[0]: case for case in reversed(ESTIMATOR_CASES) if case.cost >= 2}.values())[::-1]


def second_moment_run(make: Callable[[], Estimator], state: dict, logits: Tensor, f, name: str | None = None,
                      delta: float = 0.0, seed: int = 7) -> tuple[float, dict[str, float]]:
    """One call of a fresh estimator (`make()`, loaded with `state`; the first entry of parameter
    `name` moved by `delta`) on the same draws (`seed`): the second moment mean(g**2) of its logit
    estimate, and the first entry of every parameter's gradient. Central differences of the first
    against the second check that learned state descends mean(g**2)."""
    estimator = make()
    estimator.load_state_dict(state)
    if name is not None:
        with torch.no_grad():
            dict(estimator.named_parameters())[name].view(-1)[0] += delta
    leaf = logits.clone().requires_grad_(True)
    torch.manual_seed(seed)
    estimator(leaf, f).loss.backward()
    g = -leaf.shape[0] * leaf.grad
    return (g.double() ** 2).mean().item(), {n: p.grad.view(-1)[0].item() for n, p in estimator.named_parameters()}


def case_ids(cases: list[EstimatorCase]) -> list[str]:
    return [case.id for case in cases]


# --- enumeration problems: exact gradients against many independent estimates --------------

N_REPLICAS = 20000

# Three examples, four units: moderate, saturated (|phi| ~ 6) and mixed logits.
LOGITS = torch.tensor(
    [
        [0.3, -1.2, 2.0, -0.5],
        [6.0, -6.0, 5.5, -6.2],
        [0.0, 0.1, -0.1, 3.0],
    ]
)
CHAIN_LOGITS = LOGITS[:, :3]


class PerExampleParams(nn.Module):
    """Parameters `[M, ...]` of a nonlinear f, one set per example: the gradient of each replica's
    own parameters is an independent estimate too."""

    def __init__(self, base: dict[str, Tensor], replicas: int):
        super().__init__()
        for name, value in base.items():
            self.register_parameter(name, nn.Parameter(value.repeat(replicas, *([1] * (value.dim() - 1)))))


def single_layer_params(replicas: int) -> PerExampleParams:
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(3, 4, generator=g), "v": torch.randn(3, 4, generator=g), "c": torch.randn(3, generator=g)}
    return PerExampleParams(base, replicas)


def single_layer_f(p: PerExampleParams):
    """f(b) = (b.w + c)^2 - 2 softplus(b.v): [K, M, D] -> [K, M]."""
    return lambda b: ((b * p.w).sum(-1) + p.c) ** 2 - 2 * nn.functional.softplus((b * p.v).sum(-1))


def estimated_single_layer(estimator: Estimator, chunks: int = 1, replicas: int = N_REPLICAS) -> dict[str, Tensor]:
    """Per-replica estimates [N, 3, ...] of the gradients w.r.t. the logits and f's parameters,
    from batched calls (`chunks` of them, to bound memory) and the contract: estimate = -M * grad
    of the loss (M = the call's batch size)."""
    replicas = replicas // chunks
    parts = []
    for _ in range(chunks):
        logits = LOGITS.repeat(replicas, 1).requires_grad_(True)
        params = single_layer_params(replicas)
        estimator(logits, single_layer_f(params)).loss.backward()
        grads = {"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}}
        parts.append({name: (-logits.shape[0] * g).view(replicas, 3, *g.shape[1:]) for name, g in grads.items()})
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


# The K-sample bound's problem: three units (K-tuples enumerate up to K = 6) and an f with a
# -log q term in the logits it is given (a log importance weight), whose direct derivative is
# part of the bound's gradient.
MULTI_SAMPLE_LOGITS = CHAIN_LOGITS


def multi_sample_params(replicas: int) -> PerExampleParams:
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(3, 3, generator=g), "v": torch.randn(3, 3, generator=g), "c": torch.randn(3, generator=g)}
    return PerExampleParams(base, replicas)


def multi_sample_f(p: PerExampleParams):
    """f(samples, logits) = (b.w + c)^2 - 2 softplus(b.v) - log q(b | logits): [K, M, D] -> [K, M]."""

    def f(samples, logits):
        b = samples[0]
        return ((b * p.w).sum(-1) + p.c) ** 2 - 2 * nn.functional.softplus((b * p.v).sum(-1)) - bernoulli_log_prob(b, logits[0])

    return f


def estimated_multi_sample(estimator: Estimator, chunks: int = 1) -> dict[str, Tensor]:
    """Per-replica estimates [N, 3, ...] of the K-sample bound's gradients w.r.t. the logits and
    f's parameters (`estimated_single_layer` for the multi-sample problem, through `chain`)."""
    replicas = N_REPLICAS // chunks
    parts = []
    for _ in range(chunks):
        logits = MULTI_SAMPLE_LOGITS.repeat(replicas, 1).requires_grad_(True)
        params = multi_sample_params(replicas)
        estimator.chain(logits, [], multi_sample_f(params)).loss.backward()
        grads = {"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}}
        parts.append({name: (-logits.shape[0] * g).view(replicas, 3, *g.shape[1:]) for name, g in grads.items()})
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def estimated(case: EstimatorCase, estimator: Estimator) -> dict[str, Tensor]:
    """The single-layer estimates of the problem of the case's training objective."""
    if case.objective == "elbo":
        return estimated_single_layer(estimator, chunks=case.chunks, replicas=case.replicas)
    return estimated_multi_sample(estimator, chunks=case.chunks)


def chain_params(replicas: int, n_layers: int = 2) -> PerExampleParams:
    """Parameters of the chain problem with `n_layers` layers of 3 units (2 or 3: at most 9 bits).
    The two-layer problem's are drawn first, so they are the same in both."""
    g = torch.Generator().manual_seed(2)
    base = {
        "layer_weight": torch.randn(3, 3, 3, generator=g),  # [example, in, out]: layer 1 -> logits of layer 2
        "layer_bias": torch.randn(3, 3, generator=g),
        "w1": torch.randn(3, 3, generator=g),
        "w2": torch.randn(3, 3, generator=g),
        "c": torch.randn(3, generator=g),
    }
    for layer in range(3, n_layers + 1):
        base[f"layer{layer - 1}_weight"] = torch.randn(3, 3, 3, generator=g)  # layer l-1 -> logits of layer l
        base[f"layer{layer - 1}_bias"] = torch.randn(3, 3, generator=g)
        base[f"w{layer}"] = torch.randn(3, 3, generator=g)
    return PerExampleParams(base, replicas)


def chain_model(p: PerExampleParams):
    """Each later layer's logits an affine map of the layer above, and
    f(b_1..b_L) = sin(2 s) + s^2 / 2 - sum_{l >= 2} log q(b_l | b_{l-1}),  s = sum_l <b_l, w_l> + c,
    which uses the detached logits the way a VAE's -log q terms do."""
    n_layers = sum(1 for name, _ in p.named_parameters() if name.startswith("w"))
    maps = [(p.layer_weight, p.layer_bias)] + [
        (getattr(p, f"layer{l - 1}_weight"), getattr(p, f"layer{l - 1}_bias")) for l in range(3, n_layers + 1)
    ]

    def affine(weight, bias):
        return lambda b: torch.einsum("kmi,mij->kmj", b, weight) + bias

    def f(samples, logits):
        joint = sum((b * getattr(p, f"w{l + 1}")).sum(-1) for l, b in enumerate(samples)) + p.c
        log_q = sum(bernoulli_log_prob(b, phi) for b, phi in zip(samples[1:], logits[1:]))
        return torch.sin(2 * joint) + 0.5 * joint**2 - log_q

    return [affine(weight, bias) for weight, bias in maps], f


def estimated_chain(estimator: Estimator, n_layers: int = 2, chunks: int = 1):
    """The last call's output and per-replica estimates [N, 3, ...] for the chain problem, from
    `chunks` batched calls (to bound memory)."""
    replicas = N_REPLICAS // chunks
    parts = []
    for _ in range(chunks):
        logits = CHAIN_LOGITS.repeat(replicas, 1).requires_grad_(True)
        params = chain_params(replicas, n_layers)
        layers, f = chain_model(params)
        out = estimator.chain(logits, layers, f)
        out.loss.backward()
        grads = {"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}}
        parts.append({name: (-logits.shape[0] * g).view(replicas, 3, *g.shape[1:]) for name, g in grads.items()})
    return out, {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


@functools.lru_cache(maxsize=None)
def exact_multi_sample_gradients(n_samples: int) -> dict[str, torch.Tensor]:
    """Exact gradients of the K-sample bound of the multi-sample problem (K = `n_samples`)."""
    logits = MULTI_SAMPLE_LOGITS.clone().requires_grad_(True)
    params = multi_sample_params(1)
    objective = exact_chain_bound(logits, [], multi_sample_f(params), n_samples).sum()
    grads = torch.autograd.grad(objective, [logits, *params.parameters()])
    return dict(zip(["logits", "w", "v", "c"], grads))


@functools.lru_cache(maxsize=None)
def exact_chain_bound_gradients(n_samples: int) -> dict[str, torch.Tensor]:
    """Exact gradients of the K-sample bound of the two-layer chain (K = `n_samples` chains)."""
    logits = CHAIN_LOGITS.clone().requires_grad_(True)
    params = chain_params(1)
    layers, f = chain_model(params)
    objective = exact_chain_bound(logits, layers, f, n_samples).sum()
    names = ["logits", *(n for n, _ in params.named_parameters())]
    return dict(zip(names, torch.autograd.grad(objective, [logits, *params.parameters()])))


def decoder_objective(seed: int = 0, n_units: int = 4, n_pixels: int = 6):
    """A small Bernoulli 'decoder' log-likelihood f(b) = log p(x | b): [K, B, D] -> [K, B]."""
    g = torch.Generator().manual_seed(seed)
    decoder = nn.Linear(n_units, n_pixels)
    x = torch.bernoulli(torch.full((n_pixels,), 0.5), generator=g)

    def f(b):
        return -nn.functional.binary_cross_entropy_with_logits(
            decoder(b), x.expand(*b.shape[:-1], -1), reduction="none"
        ).sum(-1)

    return decoder, f


# --- the command line ----------------------------------------------------------------------

TINY = [
    "--seed_everything", "0",
    "--data.dataset", "mnist_subset",
    "--data.batch_size", "25",
    "--data.eval_batch_size", "50",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "4",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]
SMALL_EVAL = ["--model.val_samples", "5", "--model.test_samples", "20", "--model.eval_chunk", "8"]


def estimator_args(case: EstimatorCase) -> list[str]:
    """The command-line options that select a case's estimator (and the model's training
    objective, where the estimator's is not the default ELBO)."""
    args = [] if case.objective == "elbo" else ["--model.training_objective", case.objective]
    args += ["--model.estimator", case.name]
    for key, value in case.build().config()["init_args"].items():
        args += [f"--model.estimator.{key}", str(value)]
    return args


def events(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalars(log_dir) -> dict[str, list[float]]:
    """Every scalar tag of a run folder -> its values."""
    accumulator = events(log_dir)
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def steps_by_tag(log_dir) -> dict[str, list[int]]:
    """Every scalar tag of a run folder -> the steps it was logged at."""
    accumulator = events(log_dir)
    return {tag: [e.step for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def only_version(tmp_path):
    """The newest `lightning_logs/version_N` under `tmp_path`."""
    return sorted((tmp_path / "lightning_logs").iterdir())[-1]
