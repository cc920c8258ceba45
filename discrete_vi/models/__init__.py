"""Models with binary stochastic layers, as LightningModules driven by an `Estimator`.

`MODELS` lists the package's models by the name `--model` takes.
"""

from discrete_vi.models.model import BinaryLatentModule
from discrete_vi.models.sbn import SigmoidBeliefNet
from discrete_vi.models.vae import BinaryVAE

MODELS: dict[str, type[BinaryLatentModule]] = {"BinaryVAE": BinaryVAE, "SigmoidBeliefNet": SigmoidBeliefNet}
"""Every model shipped with the package, by the name `--model` takes."""

__all__ = ["MODELS", "BinaryLatentModule", *MODELS]
