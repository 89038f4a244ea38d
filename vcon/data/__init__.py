"""Datasets (the ``data`` config group), each a ``Loader`` registered by name (``vcon/data/base.py``): in-memory
images (``images.py``), images streamed from disk (``stream.py``) and texts as token ids (``text.py``); and the input
pipelines that prepare their batches on the training device (``augment.py``, ``randaugment.py``, ``text.py``)."""
from vcon.data import images, stream, text  # noqa: F401  each joins LOADERS
from vcon.data.base import LOADERS, Dataset, Loader, Split, check, held_out, inputs, load, loader, needs_hub

__all__ = ["LOADERS", "Dataset", "Loader", "Split", "check", "held_out", "inputs", "load", "loader", "needs_hub"]
