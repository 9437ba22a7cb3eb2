"""Keras compatibility: the Keras-style layers ``ConvLSTM1D/2D/3D`` (``layers``), Keras'
initializers, regularizers and constraints by name or serialized dict, and saved Keras files
read with h5py (``files``: a layer's weights and config by name; ``models``: a saved model
as a torch module, ``load_model``).

``from convlstm_triton import ConvLSTM2D`` is ``convlstm_triton.keras.ConvLSTM2D``.
"""

from .files import list_convlstm_layers, load_keras_layer_config, load_keras_layer_weights
from .layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, keras_config_arguments
from .models import KerasModel, load_model

__all__ = ["ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "keras_config_arguments",
           "list_convlstm_layers", "load_keras_layer_config", "load_keras_layer_weights",
           "load_model", "KerasModel"]
