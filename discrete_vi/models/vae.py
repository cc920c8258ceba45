"""`BinaryVAE`: a VAE with one or several layers of binary latent units.

    q(b_1 | x) q(b_2 | b_1) ... q(b_L | b_{L-1})        (encoder)
    p(b_L) p(b_{L-1} | b_L) ... p(x | b_1)              (decoder, mirrored)

with factorised Bernoulli distributions throughout, a learned factorised
prior on the top layer and a Bernoulli likelihood on the pixels. `linear`
networks map each layer to the next with one affine map (784-200, and
784-200-200 for two layers); `nonlinear` ones put two deterministic hidden
layers of 200 LeakyReLU units (slope 0.3 by default) between stochastic layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import bernoulli_log_prob, draw_bernoulli, sample_chain
from discrete_vi.estimators import Estimator, TrainingObjective
from discrete_vi.checks import ConfigurationError, check_count, check_positive, check_range, check_sizes
from discrete_vi.models.model import BinaryLatentModule
from discrete_vi.models.networks import Init, Network, check_init, check_network, make_network, output_layer


class BinaryVAE(BinaryLatentModule):
    """Binary-latent VAE on flattened binary images `[B, input_size]`.

    One Adam optimizer with a parameter group per part (encoder, decoder,
    prior) and one for the estimator's own parameters at the estimator's rate.

    Args:
        estimator: the gradient estimator (default `RLOO(n_samples=2)`).
        training_objective: "elbo" (train E[f]) or "multi_sample" (train the K-sample bound
            log 1/K sum_k exp f(b_k), K the estimator's; with VIMCO or LocalDisARM).
        input_size: pixels per image (the command line sets it from the data).
        latent_sizes: binary units per stochastic layer, in the order they are sampled
            (`[200]`: one layer; `[200, 200]`: two).
        network: "linear" (one affine map between layers) or "nonlinear" (two hidden LeakyReLU layers).
        hidden_size: width of the deterministic layers of nonlinear networks.
        negative_slope: the LeakyReLU's slope for negative inputs in nonlinear networks (0.3 as in the
            DisARM and double-CV code; the ARM paper's MNIST code uses 0.1).
        init: how the networks' affine maps start: "glorot" (the papers' code: Keras' Glorot-uniform
            weights and zero biases) or "pytorch" (torch.nn.Linear's default, uniform weights and
            biases of scale 1/sqrt(fan_in)).
        encoder_lr: Adam learning rate of the encoder (default: lr).
        decoder_lr: Adam learning rate of the decoder (default: lr).
        prior_lr: Adam learning rate of the prior's logits (default: lr); 0 freezes the prior.
        demean: subtract the training mean from the encoder's input (as DisARM's code does).
        init_output_bias: set the decoder's output bias to the logit of the training mean before training.
        **kwargs: `BinaryLatentModule`'s options (lr, val_samples, test_samples, eval_chunk, compile, compile_mode).
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        training_objective: TrainingObjective = "elbo",
        input_size: int = 784,
        latent_sizes: tuple[int, ...] = (200,),
        network: Network = "linear",
        hidden_size: int = 200,
        negative_slope: float = 0.3,
        init: Init = "glorot",
        encoder_lr: float | None = None,
        decoder_lr: float | None = None,
        prior_lr: float | None = None,
        demean: bool = False,
        init_output_bias: bool = True,
        **kwargs,
    ):
        super().__init__(estimator=estimator, training_objective=training_objective, **kwargs)
        latent_sizes = check_sizes("latent_sizes", latent_sizes)
        check_count("input_size", input_size, 1)
        check_network(network)
        check_range("negative_slope", negative_slope, 0.0, 1.0, include_low=True)
        self.init = check_init(init)
        self.encoder_lr = check_positive("encoder_lr", encoder_lr)
        self.decoder_lr = check_positive("decoder_lr", decoder_lr)
        self.prior_lr = check_range("prior_lr", prior_lr, include_low=True, note=" (0 freezes the prior)")
        self.check_estimator(len(latent_sizes))
        self.input_size, self.latent_sizes, self.network = input_size, latent_sizes, network
        self.demean, self.init_output_bias = demean, init_output_bias
        sizes = [input_size, *latent_sizes]
        # encoder[l]: layer l (x for l = 0) -> logits of latent layer l+1.
        self.encoder = nn.ModuleList(make_network(a, b, network, hidden_size, negative_slope, init) for a, b in zip(sizes, sizes[1:]))
        # decoder[l]: latent layer l+1 -> logits of layer l (pixels for l = 0).
        self.decoder = nn.ModuleList(make_network(b, a, network, hidden_size, negative_slope, init) for a, b in zip(sizes, sizes[1:]))
        self.prior_logits = nn.Parameter(torch.zeros(latent_sizes[-1]))
        self.register_buffer("input_mean", torch.zeros(input_size))
        # Set once the training mean has been taken (saved in checkpoints, so a resumed or
        # repeated fit does not reset the trained output bias).
        self.register_buffer("initialised_from_data", torch.tensor(False))

    def setup(self, stage: str) -> None:
        """Check the data's input size; take the training mean for demeaning and the output bias."""
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or bool(self.initialised_from_data):
            return
        mean = getattr(datamodule, "train_mean", None)
        if mean is None:
            if self.demean:
                raise ConfigurationError("demean=True needs the training mean: train with BinarizedImageDataModule")
            return
        with torch.no_grad():
            self.input_mean.copy_(mean)
            if self.init_output_bias:
                output_layer(self.decoder[0]).bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
            self.initialised_from_data.fill_(True)

    def stochastic_layers(self, batch: Tensor):
        x = batch - self.input_mean if self.demean else batch
        return self.encoder[0](x), list(self.encoder[1:])

    def objective(self, batch: Tensor, samples: list[Tensor], logits: list[Tensor]) -> Tensor:
        """`log p(x, b) - log q(b | x)`: `[K, B]`."""
        log_p = bernoulli_log_prob(batch, self.decoder[0](samples[0]))
        for layer in range(1, len(samples)):
            log_p = log_p + bernoulli_log_prob(samples[layer - 1], self.decoder[layer](samples[layer]))
        log_p = log_p + bernoulli_log_prob(samples[-1], self.prior_logits)
        log_q = sum(bernoulli_log_prob(b, phi) for b, phi in zip(samples, logits))
        return log_p - log_q

    def parameter_groups(self) -> list[dict]:
        parts = {
            "encoder": (list(self.encoder.parameters()), self.encoder_lr),
            "decoder": (list(self.decoder.parameters()), self.decoder_lr),
            "prior": ([self.prior_logits], self.prior_lr),
        }
        return [{"params": params, "lr": self.lr if lr is None else lr, "name": name} for name, (params, lr) in parts.items()]

    @torch.no_grad()
    def images_for_logging(self, batch: Tensor) -> dict[str, Tensor]:
        """Inputs, their reconstructions (pixel means given b ~ q(b | x)) and prior samples' pixel means."""
        first_logits, layers = self.stochastic_layers(batch)
        posterior = sample_chain(first_logits, layers, 1)  # one sample: [1, B, D]
        top = draw_bernoulli(self.prior_logits.expand(batch.shape[0], -1))[0]
        for layer in range(len(self.decoder) - 1, 0, -1):
            top = draw_bernoulli(self.decoder[layer](top))[0]
        return {
            "inputs": batch,
            "reconstructions": torch.sigmoid(self.decoder[0](posterior.samples[0][0])),
            "samples": torch.sigmoid(self.decoder[0](top)),
        }
