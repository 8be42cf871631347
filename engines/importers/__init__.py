"""Importers that turn other frameworks' trained models into PartCam checkpoints."""

from .caffe import CaffeImportError, ImportResult, import_caffemodel, read_caffemodel

__all__ = ["CaffeImportError", "ImportResult", "import_caffemodel", "read_caffemodel"]
