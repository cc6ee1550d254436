"""torchport: eager PyTorch model → validated ONNX package → served over the Open Inference Protocol.

The project is split into subpackages mapped from the repository's top-level folders:
``torchport.exporters`` (torch side), ``torchport.runtimes`` (no torch: package format,
ONNX Runtime sessions, server), ``torchport.deploy`` and ``torchport.cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
