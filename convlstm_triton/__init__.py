"""convlstm-triton: ConvLSTM layers with fused Triton kernels and Keras 3 semantics."""

from ._version import __version__

__all__ = ["__version__"]
