"""RecursiveMAS for WebGPU: expose last hidden states of MLC-style models and run latent loops."""

__version__ = "0.1.0"
