"""crossover: data-constrained pre-training studies of autoregressive vs masked-diffusion language models."""

__version__ = "0.1.0"
