"""convlstm-triton: ConvLSTM layers with fused Triton kernels and Keras 3 semantics."""

from ._version import __version__
from .deploy import set_backend
from .functional import conv_lstm
from .keras.layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D
from .torch_modules import ConvLSTM, ConvLSTMCell
from .tune_ahead import tune

__all__ = ["__version__", "conv_lstm", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvLSTMCell",
           "ConvLSTM", "set_backend", "tune"]
