"""`compile=True`: the compiled training loss gives eager's results (same random draws, up to
floating-point reassociation), compiles once, and trains from the command line."""

import pytest
import torch
import torch._dynamo
import torch._inductor.config

from discrete_vi.cli import run_cli
from discrete_vi.estimators import ESTIMATORS
from discrete_vi.models import BinaryVAE
from helpers import ONE_PER_ESTIMATOR, SMALL_EVAL, TINY


def smallest_cost(estimator_name: str) -> int:
    """The fewest evaluations of f from 2 up at which the estimator runs (3 for REBAR and RELAX)."""
    return next(case.cost for case in ONE_PER_ESTIMATOR if case.name == estimator_name)


def train_a_few_steps(estimator_name: str, compile: bool, batch: torch.Tensor, steps: int = 3,
                      latent_sizes: tuple[int, ...] = (8,)):
    """`steps` SGD steps of a small VAE; returns the per-step losses and the final parameters.
    SGD, not Adam: Adam's first steps amplify rounding differences of near-zero gradients."""
    torch.manual_seed(0)
    cls = ESTIMATORS[estimator_name]
    model = BinaryVAE(estimator=cls.at_cost(smallest_cost(estimator_name)), training_objective=cls.training_objective,
                      latent_sizes=latent_sizes, compile=compile)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture
def same_random_draws():
    """Compiled code draws its random numbers with torch's eager generator (as eager code does)."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def check_compiled_matches_eager(estimator_name: str, latent_sizes: tuple[int, ...] = (8,)):
    batch = (torch.rand(20, 784, generator=torch.Generator().manual_seed(3)) < 0.2).float()
    eager_losses, eager_params = train_a_few_steps(estimator_name, False, batch, latent_sizes=latent_sizes)
    with torch._dynamo.config.patch(error_on_recompile=True):  # compiled once, reused every step
        compiled_losses, compiled_params = train_a_few_steps(estimator_name, True, batch, latent_sizes=latent_sizes)
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses), rtol=1e-4, atol=1e-3)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("estimator_name", ["RLOO", "RLOODoubleCV"])
def test_compiled_training_matches_eager(estimator_name, same_random_draws):
    check_compiled_matches_eager(estimator_name)


@pytest.mark.slow
@pytest.mark.parametrize("estimator_name", sorted(ESTIMATORS))
def test_every_estimator_compiles_and_matches_eager(estimator_name, same_random_draws):
    if ESTIMATORS[estimator_name].compile_refusal:
        with pytest.raises(ValueError, match="cannot be compiled"):
            BinaryVAE(estimator=ESTIMATORS[estimator_name].at_cost(smallest_cost(estimator_name)), compile=True,
                      training_objective=ESTIMATORS[estimator_name].training_objective)
        return
    check_compiled_matches_eager(estimator_name)


@pytest.mark.slow
@pytest.mark.parametrize("estimator_name", ["RLOODoubleCV", "RODEO"])
def test_double_cv_and_rodeo_compile_on_two_layers(estimator_name, same_random_draws):
    check_compiled_matches_eager(estimator_name, latent_sizes=(8, 6))


def test_compiled_fit_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        cli = run_cli(["fit", *TINY, "--model.latent_sizes", "[30]", *SMALL_EVAL, "--model.compile", "true"])
    assert cli.trainer.global_step == 4
    assert torch.isfinite(cli.trainer.callback_metrics["train/elbo"])
    torch._dynamo.reset()
