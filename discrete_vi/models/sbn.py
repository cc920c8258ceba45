"""`SigmoidBeliefNet`: the structured-output task of the ARM paper.

The upper half of a binarized digit `x` (392 pixels) goes through stochastic
layers of binary units, `p(b_1 | x) p(b_2 | b_1)`, and the last layer predicts
the lower half `y`: `p(y | b_L)`, all factorised Bernoulli with affine maps
(392-200-200-392 by default). Training maximises `E_p(b|x)[log p(y | b)]`
with the estimator: `f(b) = log p(y | b)` and the distribution being
differentiated is the network's own `p(b | x)`. Evaluation reports the
M-sample bound `log 1/M sum_m p(y | b_m)` as `log_likelihood` (M = 100 for
validation, 1000 for test) and `test/nll` = its negative.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import bernoulli_log_prob, sample_chain
from discrete_vi.estimators import Estimator, TrainingObjective
from discrete_vi.checks import ConfigurationError, check_sizes
from discrete_vi.models.model import BinaryLatentModule
from discrete_vi.models.networks import Init, initialise

IMAGE_PIXELS = 784


def split_upper_lower(images: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened 28x28 images `[..., 784]` -> (upper half: rows 0-13, lower half: rows 14-27), `[..., 392]` each."""
    half = IMAGE_PIXELS // 2
    return images[..., :half], images[..., half:]


class SigmoidBeliefNet(BinaryLatentModule):
    """Predict the lower half of a 28x28 binary image from its upper half.

    Args:
        estimator: the gradient estimator (default `RLOO(n_samples=2)`).
        training_objective: "elbo" (train E[log p(y | b)]) or "multi_sample" (train the K-sample
            bound log 1/K sum_k p(y | b_k), K the estimator's; with VIMCO or LocalDisARM).
        input_size: pixels per whole image (784; the command line sets it from the data).
        latent_sizes: binary units per stochastic layer (`[200, 200]` as in the ARM paper).
        init: how the affine maps start: "glorot" (the ARM code: Glorot-uniform weights, zero biases)
            or "pytorch" (torch.nn.Linear's default, uniform weights and biases of scale 1/sqrt(fan_in)).
        **kwargs: `BinaryLatentModule`'s options (lr; val_samples and test_samples: M of the M-sample
            bound at validation and at test; eval_chunk, compile, compile_mode).
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        training_objective: TrainingObjective = "elbo",
        input_size: int = IMAGE_PIXELS,
        latent_sizes: tuple[int, ...] = (200, 200),
        init: Init = "glorot",
        **kwargs,
    ):
        super().__init__(estimator=estimator, training_objective=training_objective, **kwargs)
        if input_size != IMAGE_PIXELS:
            raise ConfigurationError(f"SigmoidBeliefNet splits 28x28 images: input_size must be {IMAGE_PIXELS}, got {input_size}")
        latent_sizes = check_sizes("latent_sizes", latent_sizes)
        self.check_estimator(len(latent_sizes))
        self.input_size, self.latent_sizes = input_size, latent_sizes
        half = input_size // 2
        sizes = [half, *latent_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.output = nn.Linear(latent_sizes[-1], input_size - half)
        self.init = init
        initialise(self.layers, init)
        initialise(self.output, init)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The stochastic layers' maps (the net's `q`-side: upper half -> b_1 -> b_2 ...)."""
        return [p for p in self.layers.parameters() if p.requires_grad]

    def stochastic_layers(self, batch: Tensor):
        upper, _ = split_upper_lower(batch)
        return self.layers[0](upper), list(self.layers[1:])

    def objective(self, batch: Tensor, samples: list[Tensor], logits: list[Tensor]) -> Tensor:
        """`log p(y | b_L)`: `[K, B]`."""
        _, lower = split_upper_lower(batch)
        return bernoulli_log_prob(lower, self.output(samples[-1]))

    @torch.no_grad()
    def images_for_logging(self, batch: Tensor) -> dict[str, Tensor]:
        """Digits with the lower half replaced by the predicted pixel means (one sample of b)."""
        first, layers = self.stochastic_layers(batch)
        chain = sample_chain(first, layers, 1)  # one sample: [1, B, D]
        upper, _ = split_upper_lower(batch)
        predicted = torch.sigmoid(self.output(chain.samples[-1][0]))
        return {"inputs": batch, "completions": torch.cat([upper, predicted], -1)}
