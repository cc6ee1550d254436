"""torchport: eager PyTorch model → validated ONNX package → served over the Open Inference Protocol.

The project is split into subpackages that are the repository's top-level folders (``torchport/exporters``
and its siblings are relative symlinks to them):
``torchport.exporters`` (torch side), ``torchport.runtimes`` (no torch: package format,
ONNX Runtime sessions, server), ``torchport.deploy`` and ``torchport.cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
