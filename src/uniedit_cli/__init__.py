"""uniedit: the Uni-Edit loop (synth, train, edit, generate, ask, eval) for unified multimodal models."""

__version__ = "0.1.0"
