"""Models with binary stochastic layers, as LightningModules driven by an `Estimator`."""

from discrete_vi.models.base import BinaryLatentModule
from discrete_vi.models.sbn import SigmoidBeliefNet
from discrete_vi.models.vae import BinaryVAE

__all__ = ["BinaryLatentModule", "BinaryVAE", "SigmoidBeliefNet"]
