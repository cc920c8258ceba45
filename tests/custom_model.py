"""A model defined outside the package, as a user would: a binary VAE with a
nonlinear (tanh) decoder, written as a small subclass of BinaryLatentModule.
The command-line tests train it by class path (`custom_model.TanhDecoderVAE`)."""

import torch
from torch import nn

from discrete_vi.estimators import Estimator, TrainingObjective
from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.models import BinaryLatentModule


class TanhDecoderVAE(BinaryLatentModule):
    """One layer of `latent_size` binary units; encoder linear, decoder latent -> tanh(64) -> pixels."""

    def __init__(
        self,
        estimator: Estimator | None = None,
        input_size: int = 784,
        latent_size: int = 20,
        lr: float = 1e-3,
        val_samples: int = 100,
        test_samples: int = 1000,
        eval_chunk: int = 100,
        training_objective: TrainingObjective = "elbo",
    ):
        super().__init__(estimator, lr, val_samples, test_samples, eval_chunk, training_objective=training_objective)
        self.check_estimator(1)
        self.encoder = nn.Linear(input_size, latent_size)
        self.decoder = nn.Sequential(nn.Linear(latent_size, 64), nn.Tanh(), nn.Linear(64, input_size))
        self.prior_logits = nn.Parameter(torch.zeros(latent_size))

    def stochastic_layers(self, batch):
        return self.encoder(batch), []

    def objective(self, batch, samples, logits):
        b = samples[0]
        log_p = bernoulli_log_prob(batch, self.decoder(b)) + bernoulli_log_prob(b, self.prior_logits)
        return log_p - bernoulli_log_prob(b, logits[0])


class DivergingVAE(TanhDecoderVAE):
    """Its objective turns to nan from training step `diverge_at` on (a run that diverges)."""

    def __init__(self, estimator: Estimator | None = None, input_size: int = 784, diverge_at: int = 2):
        super().__init__(estimator, input_size)
        self.diverge_at = diverge_at

    def objective(self, batch, samples, logits):
        values = super().objective(batch, samples, logits)
        return values * float("nan") if self.training and self.global_step >= self.diverge_at else values


class BuggyVAE(TanhDecoderVAE):
    """A model whose own code has a bug that raises ValueError while it is built."""

    def __init__(self, estimator: Estimator | None = None, input_size: int = 784):
        super().__init__(estimator, input_size)
        int("not a number")  # the user's bug: must keep its traceback
