"""Model adapters, one module per family. Import :func:`load_model` lazily: it pulls in torch."""

from uniedit_cli.models.base import load_model

__all__ = ["load_model"]
