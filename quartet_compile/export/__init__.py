"""NVFP4 checkpoints of a model trained with the backend, in the formats inference engines load
(:func:`export`, :mod:`.formats`)."""

from .checkpoint import ExportedLayer, ExportReport, export
from .formats import Format

__all__ = ["ExportReport", "ExportedLayer", "Format", "export"]
