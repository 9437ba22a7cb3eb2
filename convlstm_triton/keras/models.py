"""A saved Keras ``Sequential`` model as a torch module, read with h5py (Keras is not needed).

``load_model(path)`` reads a ``.keras`` file (config.json + model.weights.h5) or a legacy ``.h5``
model (model_config + model_weights) and returns a ``KerasSequential``: an ``nn.Module`` that
computes the model's function on channels-last tensors (as Keras takes them), in inference
(``eval()``) and in training mode (``train()``: BatchNormalization on batch statistics, dropout
drawn by torch). Its layers are torch modules named as the Keras layers (``model.layers["enc"]``);
the ConvLSTM ones are this library's ``ConvLSTM1D/2D/3D``, on the Triton kernels on a GPU.

Layers: InputLayer, ConvLSTM1D/2D/3D, BatchNormalization (last axis), Conv1D/2D/3D
(channels_last, "valid" / "same"), Dense, Activation, Dropout, SpatialDropout1D/2D/3D, Flatten,
Reshape. Any other layer, a functional model, or an option outside these is a ValueError naming
it. Not yet: functional models, Conv*Transpose, pooling, UpSampling, TimeDistributed,
Add/Concatenate.

BatchNormalization follows Keras: normalization by the batch's biased variance in training mode,
and moving statistics updated as ``moving = moving * momentum + batch * (1 - momentum)`` with
that same biased variance (torch's BatchNorm would update with the unbiased one).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..activations import CHANNEL_WISE_ACTIVATIONS, TORCH_ACTIVATIONS, check_activation
from ..geometry import normalize_tuple, same_pad_before
from .files import _config_paths, _decode_names, _legacy_root, _read, _with_file
from .layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, keras_config_arguments

__all__ = ["load_model", "KerasSequential", "SUPPORTED_LAYERS"]


def load_model(path):
    """The Keras ``Sequential`` model saved at ``path`` (``.keras`` or legacy ``.h5``) as a
    ``KerasSequential`` module with the file's weights (see the module docstring)."""

    def read(h5, h5py, config, source):
        if config is None:
            raw = h5.attrs.get("model_config")
            config = _json(raw.decode() if isinstance(raw, bytes) else raw)
        if not isinstance(config, dict):
            raise ValueError(f"{source} holds no model config (a .weights.h5 file has none): "
                             "load_model needs a .keras file or a legacy .h5 model")
        if config.get("class_name") != "Sequential":
            raise ValueError(f"{source}: load_model reads Sequential models; this one is a "
                             f"{config.get('class_name')!r} (functional models: not yet)")
        legacy = _legacy_root(h5)
        paths = _config_paths(config)
        layers = []
        for layer in config["config"]["layers"]:
            class_name, cfg = layer["class_name"], layer.get("config") or {}
            name = cfg.get("name")
            if legacy is not None and "layers" not in h5:
                weights = _legacy_weights(legacy, h5py, name)
            else:
                weights = _keras3_weights(h5, h5py, paths[name][0]) if name in paths else []
            layers.append((name, class_name, cfg, weights))
        return layers

    built = []
    for name, class_name, cfg, weights in _with_file(path, read):
        builder = _BUILDERS.get(class_name)
        if builder is None:
            raise ValueError(f"layer {name!r}: Keras {class_name} is not supported by load_model "
                             f"(supported: {', '.join(SUPPORTED_LAYERS)})")
        module = builder(cfg, weights)
        if module is not None:
            built.append((name, module))
    return KerasSequential(built)


class KerasSequential(nn.Module):
    """The layers of a Keras Sequential model, applied in order to channels-last tensors;
    ``layers``: an ``nn.ModuleDict`` by Keras layer name."""

    def __init__(self, named_layers):
        super().__init__()
        self.layers = nn.ModuleDict(named_layers)

    def forward(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x


def _json(raw):
    import json

    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _keras3_weights(h5, h5py, path):
    """A layer's variables in Keras' order: <path>/vars/0, 1, ... (a ConvLSTM's in cell/vars)."""
    group = h5.get(path)
    if not isinstance(group, h5py.Group):
        return []
    for sub in ("vars", "cell/vars"):
        vars_group = group.get(sub)
        if isinstance(vars_group, h5py.Group) and len(vars_group.keys()):
            return [_read(vars_group[k]) for k in sorted(vars_group.keys(), key=int)]
    return []


def _legacy_weights(root, h5py, name):
    group = root.get(name)
    if not isinstance(group, h5py.Group):
        return []
    return [_read(group[w]) for w in _decode_names(group.attrs.get("weight_names", []))]


def _tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check(cfg, name, allowed, what):
    value = cfg.get(name, allowed[0])
    if value not in allowed:
        raise ValueError(f"layer {cfg.get('name')!r}: {what} {name}={value!r} is not supported by "
                         f"load_model (supported: {list(allowed)})")
    return value


def _last_axis_activation(name):
    """A Keras activation applied to channels-last tensors (channel-wise ones over the last
    axis, as Keras)."""
    name = check_activation("linear" if name is None else name, "activation")
    if name in CHANNEL_WISE_ACTIVATIONS:
        channels_first = TORCH_ACTIVATIONS[name]
        return lambda x: channels_first(x.movedim(-1, 1)).movedim(1, -1)
    return TORCH_ACTIVATIONS[name]


class _Activation(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.fn = _last_axis_activation(name)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return repr(self.name)


class BatchNormLast(nn.Module):
    """Keras' BatchNormalization over the last axis (see the module docstring)."""

    def __init__(self, channels, epsilon, momentum, gamma=None, beta=None):
        super().__init__()
        self.epsilon, self.momentum = epsilon, momentum
        self.weight = nn.Parameter(gamma) if gamma is not None else None
        self.bias = nn.Parameter(beta) if beta is not None else None
        self.register_buffer("moving_mean", torch.zeros(channels))
        self.register_buffer("moving_variance", torch.ones(channels))

    def forward(self, x):
        if self.training:
            dims = tuple(range(x.dim() - 1))
            mean = x.mean(dims)
            variance = x.var(dims, unbiased=False)
            with torch.no_grad():
                m = self.momentum
                self.moving_mean.mul_(m).add_(mean.detach() * (1 - m))
                self.moving_variance.mul_(m).add_(variance.detach() * (1 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = (x - mean) * torch.rsqrt(variance + self.epsilon)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def _batch_norm(cfg, weights):
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1]):
        raise ValueError(f"layer {cfg.get('name')!r}: BatchNormalization(axis={axis!r}) is not "
                         "supported by load_model (the last axis only)")
    center, scale = cfg.get("center", True), cfg.get("scale", True)
    weights = [_tensor(w) for w in weights]
    gamma = weights.pop(0) if scale else None
    beta = weights.pop(0) if center else None
    mean, variance = weights
    module = BatchNormLast(mean.numel(), float(cfg.get("epsilon", 1e-3)),
                          float(cfg.get("momentum", 0.99)), gamma, beta)
    module.moving_mean.copy_(mean)
    module.moving_variance.copy_(variance)
    return module


class ConvLast(nn.Module):
    """Keras' Conv1D/2D/3D on channels-last tensors: TF "same" padding (asymmetric, computed per
    input size), then torch's conv, bias and activation."""

    def __init__(self, rank, kernel, bias, strides, padding, dilation, groups, activation):
        super().__init__()
        self.rank, self.strides, self.padding = rank, strides, padding
        self.dilation, self.groups = dilation, groups
        # Keras (*k, C_in / groups, F) -> torch (F, C_in / groups, *k)
        self.weight = nn.Parameter(kernel.permute(rank + 1, rank, *range(rank)).contiguous())
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.activation = _Activation(activation)

    def forward(self, x):
        lead = x.shape[:-self.rank - 1]
        x = x.reshape(-1, *x.shape[-self.rank - 1:]).movedim(-1, 1)
        if self.padding == "same":
            pads = []
            for n, k, s, d in zip(reversed(x.shape[2:]), reversed(self.weight.shape[2:]),
                                  reversed(self.strides), reversed(self.dilation)):
                before = same_pad_before(n, k, s, d)
                total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
                pads += [before, total - before]
            x = F.pad(x, pads)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1]
        y = conv(x, self.weight, self.bias, self.strides, 0, self.dilation, self.groups)
        y = y.movedim(1, -1)
        return self.activation(y.reshape(*lead, *y.shape[1:]))


def _conv(rank):
    def build(cfg, weights):
        _check(cfg, "data_format", ("channels_last", None), "Conv")
        padding = _check(cfg, "padding", ("valid", "same"), "Conv")
        weights = [_tensor(w) for w in weights]
        kernel = weights[0]
        bias = weights[1] if cfg.get("use_bias", True) else None
        strides = normalize_tuple(cfg.get("strides", 1), rank, "strides")
        dilation = normalize_tuple(cfg.get("dilation_rate", 1), rank, "dilation_rate")
        return ConvLast(rank, kernel, bias, strides, padding, dilation,
                        int(cfg.get("groups", 1)), cfg.get("activation"))
    return build


class DenseLast(nn.Module):
    def __init__(self, kernel, bias, activation):
        super().__init__()
        self.weight = nn.Parameter(kernel.t().contiguous())  # torch's (out, in)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.activation = _Activation(activation)

    def forward(self, x):
        return self.activation(F.linear(x, self.weight, self.bias))


def _dense(cfg, weights):
    weights = [_tensor(w) for w in weights]
    return DenseLast(weights[0], weights[1] if cfg.get("use_bias", True) else None,
                     cfg.get("activation"))


class _Dropout(nn.Module):
    """Dropout (``spatial``: one draw per sample and channel, over all other axes)."""

    def __init__(self, rate, spatial):
        super().__init__()
        self.rate, self.spatial = rate, spatial

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        if not self.spatial:
            return F.dropout(x, self.rate, True)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        keep = (torch.rand(shape, device=x.device) >= self.rate).to(x.dtype)
        return x * keep / (1 - self.rate)


class _Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def _convlstm(cls):
    def build(cfg, weights):
        layer = cls(**keras_config_arguments(cfg))
        layer.set_keras_weights(weights)
        return layer
    return build


_BUILDERS = {
    "InputLayer": lambda cfg, weights: None,
    "ConvLSTM1D": _convlstm(ConvLSTM1D),
    "ConvLSTM2D": _convlstm(ConvLSTM2D),
    "ConvLSTM3D": _convlstm(ConvLSTM3D),
    "BatchNormalization": _batch_norm,
    "Conv1D": _conv(1),
    "Conv2D": _conv(2),
    "Conv3D": _conv(3),
    "Dense": _dense,
    "Activation": lambda cfg, weights: _Activation(cfg.get("activation")),
    "Dropout": lambda cfg, weights: _Dropout(float(cfg.get("rate", 0.0)), False),
    "SpatialDropout1D": lambda cfg, weights: _Dropout(float(cfg.get("rate", 0.0)), True),
    "SpatialDropout2D": lambda cfg, weights: _Dropout(float(cfg.get("rate", 0.0)), True),
    "SpatialDropout3D": lambda cfg, weights: _Dropout(float(cfg.get("rate", 0.0)), True),
    "Flatten": lambda cfg, weights: nn.Flatten(),
    "Reshape": lambda cfg, weights: _Reshape(cfg["target_shape"]),
}
SUPPORTED_LAYERS = tuple(_BUILDERS)
