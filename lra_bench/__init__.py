"""lra-bench: the Long Range Arena benchmarking harness for JAX / Flax NNX."""

__version__ = "0.1.0"
