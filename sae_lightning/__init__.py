"""sae-lightning: train sparse autoencoders on a frozen transformer's activations and test
which learned features are real."""

__version__ = "0.1.0"
