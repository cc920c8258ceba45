"""discrete_vi: training models with binary stochastic latent variables
using unbiased gradient estimators."""

from discrete_vi.threads import bounded_spinning

bounded_spinning()  # before torch is imported: idle OpenMP threads spin briefly, then sleep (threads.py)

__version__ = "0.1.0"
