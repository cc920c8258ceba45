"""discrete_vi: training models with binary stochastic latent variables
using unbiased gradient estimators."""

__version__ = "0.1.0"
