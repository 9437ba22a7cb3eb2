"""A saved Keras model as a torch module, read with h5py (Keras is not needed).

``load_model(path)`` reads a ``.keras`` file (config.json + model.weights.h5) or a legacy ``.h5``
model (model_config + model_weights) and returns a ``KerasModel``: an ``nn.Module`` that computes
the model's function on channels-last tensors (as Keras takes them), in inference (``eval()``)
and in training mode (``train()``: BatchNormalization on batch statistics, dropout drawn by
torch). Its layers are torch modules named as the Keras layers (``model.layers["enc"]``); the
ConvLSTM ones are this library's ``ConvLSTM1D/2D/3D``, on the Triton kernels on a GPU.

Models: Sequential, and functional models whose layers are each called once (a layer shared
between several calls is refused), with one or more inputs and outputs. A ConvLSTM's call
keywords ``initial_state=`` and ``mask=`` are honoured (an encoder's ``return_state`` outputs
starting a decoder, a mask from another input), and each of a ``return_state`` layer's outputs
(sequence, h, c) goes where the config sends it. Any other keyword of a saved call is refused
with a ValueError naming it (never dropped); ``training=False`` is the layer's inference mode,
which ``train()`` overrides as Keras' ``model(x, training=True)`` does. Layers: InputLayer,
ConvLSTM1D/2D/3D, BatchNormalization (last axis), Conv1D/2D/3D and Conv1D/2D/3DTranspose
(channels_last, "valid" / "same"), Dense, Activation, Dropout, SpatialDropout1D/2D/3D,
MaxPooling1D/2D/3D, AveragePooling1D/2D/3D, UpSampling1D/2D/3D (nearest), Flatten, Reshape,
Add, Concatenate, TimeDistributed of these. Any other layer or option is a ValueError naming it.

BatchNormalization follows Keras: normalization by the batch's biased variance in training mode,
and moving statistics updated as ``moving = moving * momentum + batch * (1 - momentum)`` with
that same biased variance (torch's BatchNorm would update with the unbiased one). "same"
pooling is TensorFlow's: max over the window's valid part, average over its valid elements only.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..activations import CHANNEL_WISE_ACTIVATIONS, TORCH_ACTIVATIONS, check_activation
from ..geometry import move_from_last, move_to_last, normalize_tuple, same_pad_before
from .files import _config_paths, _decode_names, _legacy_root, _read, _with_file
from .layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, keras_config_arguments

__all__ = ["load_model", "KerasModel", "SUPPORTED_LAYERS"]


def load_model(path, config=None):
    """The Keras model saved at ``path`` (``.keras`` or legacy ``.h5``) as a ``KerasModel``
    with the file's weights (see the module docstring). ``config``: for a ``.weights.h5`` file,
    which holds no config, the model's config: a dict (``json.loads(model.to_json())``) or the
    path of a JSON file of it (``model.to_json()`` written out, or a ``.keras`` file's
    ``config.json``)."""
    if config is not None and not isinstance(config, dict):
        with open(config) as f:
            parsed = _json(f.read())
        if not isinstance(parsed, dict):
            raise ValueError(f"config: {str(config)!r} is not a JSON model config")
        config = parsed
    given = config

    def read(h5, h5py, config, source):
        if given is not None:
            config = given
        if config is None:
            raw = h5.attrs.get("model_config")
            config = _json(raw.decode() if isinstance(raw, bytes) else raw)
        if not isinstance(config, dict):
            raise ValueError(f"{source} holds no model config (a .weights.h5 file has none): "
                             "pass config=, or load a .keras file or a legacy .h5 model")
        if config.get("class_name") not in ("Sequential", "Functional", "Model"):
            raise ValueError(f"{source}: load_model reads Sequential and functional models; "
                             f"this one is a {config.get('class_name')!r}")
        legacy = _legacy_root(h5) if "layers" not in h5 else None
        paths = _config_paths(config)
        layers = []
        for layer in config["config"]["layers"]:
            cfg = layer.get("config") or {}
            name = cfg.get("name") or layer.get("name")
            if legacy is not None:
                weights = _legacy_weights(legacy, h5py, name, source)
            else:
                weights = (_keras3_weights(h5, h5py, paths[name][0], name, source)
                           if name in paths else [])
            layers.append((name, layer, weights))
        return config, layers

    config, layers = _with_file(path, read)
    modules, graph, counts = {}, [], {}
    sequential = config["class_name"] == "Sequential"
    previous = _MODEL_INPUT
    for name, layer, weights in layers:
        cfg = layer.get("config") or {}
        module = _build(layer["class_name"], cfg, weights, name)
        if sequential:
            if module is None:  # the InputLayer
                continue
            if counts.get(previous, 1) != 1:
                raise ValueError(f"layer {name!r} follows {previous!r}, which returns its "
                                 "states too (return_state=True): a Sequential model cannot "
                                 "take them")
            args, kwargs = [_Output(previous)], {}
            previous = name
        else:
            args, kwargs = _inbound(layer, name, counts)
        counts[name] = _output_count(layer["class_name"], cfg)
        modules[name] = module if module is not None else nn.Identity()
        graph.append((name, args, kwargs))
    if sequential:  # a last layer with return_state=True returns (output, h, c), as in Keras
        outputs = [_Output(previous, i) for i in range(counts.get(previous, 1))]
        return KerasModel(modules, graph, [_MODEL_INPUT], outputs)
    model_inputs = [entry[0] for entry in _tensor_list(config["config"]["input_layers"])]
    outputs = []
    for source, call, index in _tensor_list(config["config"]["output_layers"]):
        if call != 0 or source not in counts or index >= counts[source]:
            raise ValueError(f"the model's output {[source, call, index]} is not an output "
                             "of a single-call layer of the model")
        outputs.append(_Output(source, index))
    return KerasModel(modules, graph, model_inputs, outputs)


_MODEL_INPUT = "<input>"


def _tensor_list(entries):
    """Keras' [name, node, tensor] or a list of them -> a list of them."""
    return [entries] if entries and isinstance(entries[0], str) else list(entries)


class _Output:
    """Output ``index`` of layer ``source`` in a functional model's graph."""

    __slots__ = ("source", "index")

    def __init__(self, source, index=0):
        self.source, self.index = source, index

    def __repr__(self):
        return f"{self.source}[{self.index}]"


# Keyword arguments of a saved layer call that load_model honours, per layer class. ``training``
# is recorded by Keras in some calls; the torch module's mode (train() / eval()) decides instead,
# as Keras does when the model itself is called with ``training=``.
_CALL_KEYWORDS = {"ConvLSTM1D": ("initial_state", "mask"), "ConvLSTM2D": ("initial_state", "mask"),
                  "ConvLSTM3D": ("initial_state", "mask")}


# Layers that Keras calls without a mask (their call takes none) and so may be wrapped in a
# TimeDistributed that is given one: the mask changes nothing.
_MASK_FREE = frozenset(("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                        "Conv3DTranspose", "Dense", "Activation", "Dropout", "SpatialDropout1D",
                        "SpatialDropout2D", "SpatialDropout3D", "Flatten", "Reshape",
                        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
                        "AveragePooling2D", "AveragePooling3D", "UpSampling1D", "UpSampling2D",
                        "UpSampling3D"))


def _inbound(layer, name, outputs):
    """What a functional layer's call takes: (args, kwargs) of ``_Output`` references (nested
    lists for Add/Concatenate and ``initial_state``). ``outputs``: how many outputs each layer
    seen so far returns. Every keyword is honoured or refused: none is dropped."""
    nodes = layer.get("inbound_nodes") or []
    if layer["class_name"] == "InputLayer":
        return [], {}
    if len(nodes) != 1:
        raise ValueError(f"layer {name!r} is called {len(nodes)} times in the model: shared "
                         "layers are not supported by load_model")
    node = nodes[0]
    if not isinstance(node, dict):
        raise ValueError(f"layer {name!r}: its inbound node {node!r} is in the Keras 2 "
                         "(tf.keras) format, which load_model does not read; save the model "
                         "with Keras 3")

    def reference(arg, what):
        if isinstance(arg, list):
            return [reference(a, what) for a in arg]
        if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            source, call, index = arg["config"]["keras_history"]
            if call != 0:
                raise ValueError(f"layer {name!r} takes call {call} of {source!r}: only "
                                 "single-call layers are supported by load_model")
            if source not in outputs:
                raise ValueError(f"layer {name!r} takes {source!r}, which comes later in the "
                                 "model's config")
            if index >= outputs[source]:
                raise ValueError(f"layer {name!r} takes output {index} of {source!r}, which "
                                 f"returns {outputs[source]}")
            return _Output(source, index)
        raise ValueError(f"layer {name!r}: {what} {arg!r} is not a tensor, which load_model "
                         "does not support there")

    args = [reference(arg, "the argument") for arg in node.get("args", [])]
    kwargs = {}
    allowed = _CALL_KEYWORDS.get(layer["class_name"], ())
    inner = ((layer.get("config") or {}).get("layer") or {}).get("class_name")
    for key, value in (node.get("kwargs") or {}).items():
        if value is None or (key == "training" and value is False):
            continue  # False: the layer's inference mode, what eval() gives and train() overrides
        if key == "training" and value is True:
            raise ValueError(
                f"layer {name!r} is called with training=True (on in inference too, e.g. Monte "
                "Carlo dropout): load_model follows the module's train() / eval() mode for "
                "every layer and cannot honour it")
        if key == "mask" and layer["class_name"] == "TimeDistributed" and inner in _MASK_FREE:
            continue  # Keras passes the mask on only to a layer whose call takes one
        if key not in allowed:
            raise ValueError(
                f"layer {name!r} ({layer['class_name']}) is called with {key}={value!r}: "
                f"load_model honours {', '.join(allowed) or 'no keyword arguments'} for it, "
                "and drops none")
        kwargs[key] = reference(value, f"{key}=")
    return args, kwargs


def _output_count(class_name, cfg):
    return 3 if class_name.startswith("ConvLSTM") and cfg.get("return_state") else 1


class KerasModel(nn.Module):
    """A Keras model's layers (``layers``: an ``nn.ModuleDict`` by Keras layer name) and how
    they are connected; ``forward(*inputs)`` takes and returns channels-last tensors (one per
    model output, a tuple where there are several)."""

    def __init__(self, modules, graph, inputs, outputs):
        super().__init__()
        self.layers = nn.ModuleDict(modules)
        # graph: (name, args, kwargs) in call order; inputs: model input names; outputs:
        # ``_Output`` references.
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    def forward(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise TypeError(f"the model takes {len(self.inputs)} input(s) "
                            f"({', '.join(self.inputs)}), got {len(inputs)}")
        values = dict(zip(self.inputs, inputs))

        def resolve(ref):
            if isinstance(ref, list):
                return [resolve(r) for r in ref]
            value = values[ref.source]
            return value[ref.index] if isinstance(value, tuple) else value

        for name, args, kwargs in self.graph:
            if name in values:  # an InputLayer
                continue
            values[name] = self.layers[name](
                *(resolve(a) for a in args), **{k: resolve(v) for k, v in kwargs.items()})
        out = [resolve(ref) for ref in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)


def _build(class_name, cfg, weights, name):
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise ValueError(f"layer {name!r}: Keras {class_name} is not supported by load_model "
                         f"(supported: {', '.join(SUPPORTED_LAYERS)})")
    return builder(cfg, weights)


def _json(raw):
    import json

    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _keras3_weights(h5, h5py, path, name, source):
    """A layer's variables in Keras' order: <path>/vars/0, 1, ... (a ConvLSTM's in cell/vars)."""
    group = h5.get(path)
    if not isinstance(group, h5py.Group):
        return []
    for sub in ("vars", "cell/vars", "layer/vars", "layer/cell/vars"):
        vars_group = group.get(sub)
        if isinstance(vars_group, h5py.Group) and len(vars_group.keys()):
            keys = sorted(vars_group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
            if keys != [str(i) for i in range(len(keys))] or not all(
                    isinstance(vars_group[k], h5py.Dataset) for k in keys):
                raise ValueError(f"{source}: layer {name!r} is damaged: {path}/{sub} holds "
                                 f"{keys}, not the datasets 0..{len(keys) - 1}")
            return [_read(vars_group[k]) for k in keys]
    return []


def _legacy_weights(root, h5py, name, source):
    group = root.get(name)
    if not isinstance(group, h5py.Group):
        return []
    weights = []
    for w in _decode_names(group.attrs.get("weight_names", [])):
        dataset = group.get(w)
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(f"{source}: layer {name!r} is damaged: its weight {w!r} (listed "
                             "in weight_names) is missing from the file")
        weights.append(_read(dataset))
    return weights


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
        return lambda x: move_to_last(channels_first(move_from_last(x, 1)), 1)
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
        x = move_from_last(x.reshape(-1, *x.shape[-self.rank - 1:]), 1)
        if self.padding == "same":
            x = F.pad(x, _same_pads(x.shape[2:], self.weight.shape[2:], self.strides,
                                    self.dilation))
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1]
        y = conv(x, self.weight, self.bias, self.strides, 0, self.dilation, self.groups)
        y = move_to_last(y, 1)
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


class ConvTransposeLast(nn.Module):
    """Keras' Conv1D/2D/3DTranspose on channels-last tensors, as Keras' torch backend computes it:
    torch's transposed conv without padding, then each spatial dim cropped (or zero-padded) to
    the window Keras' padding and output_padding define."""

    def __init__(self, rank, kernel, bias, strides, padding, output_padding, dilation,
                 activation):
        super().__init__()
        self.rank, self.strides, self.dilation = rank, strides, dilation
        # Keras (*k, F_out, C_in) -> torch (C_in, F_out, *k)
        self.weight = nn.Parameter(kernel.permute(rank + 1, rank, *range(rank)).contiguous())
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.crops = [_transpose_crop(k, s, d, padding, p) for k, s, d, p in zip(
            kernel.shape[:rank], strides, dilation, output_padding)]
        self.activation = _Activation(activation)

    def forward(self, x):
        lead = x.shape[:-self.rank - 1]
        x = move_from_last(x.reshape(-1, *x.shape[-self.rank - 1:]), 1)
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.rank - 1]
        y = conv(x, self.weight, None, self.strides, 0, 0, 1, self.dilation)
        y = y[(slice(None), slice(None)) + tuple(
            slice(max(0, left), -right if right > 0 else None) for left, right in self.crops)]
        if any(left < 0 or right < 0 for left, right in self.crops):
            pads = []
            for left, right in reversed(self.crops):
                pads += [max(0, -left), max(0, -right)]
            y = F.pad(y, pads)
        if self.bias is not None:
            y = y + self.bias.view(-1, *(1,) * self.rank)
        y = move_to_last(y, 1)
        return self.activation(y.reshape(*lead, *y.shape[1:]))


def _transpose_crop(kernel, stride, dilation, padding, output_padding):
    """(left, right) crop of one spatial dim (Keras' backend_utils, the JAX padding rule)."""
    kernel = (kernel - 1) * dilation + 1
    if padding == "valid":
        if output_padding is None:
            output_padding = max(kernel, stride) - kernel
        left, right = kernel - 1, kernel - 1 + output_padding
    else:
        pad = (stride + kernel - 2 if output_padding is None
               else kernel + kernel % 2 - 2 + output_padding)
        left = min(pad // 2 + pad % 2, kernel - 1)
        right = pad - left
    return kernel - 1 - left, kernel - 1 - right


def _conv_transpose(rank):
    def build(cfg, weights):
        _check(cfg, "data_format", ("channels_last", None), "ConvTranspose")
        padding = _check(cfg, "padding", ("valid", "same"), "ConvTranspose")
        weights = [_tensor(w) for w in weights]
        bias = weights[1] if cfg.get("use_bias", True) else None
        output_padding = cfg.get("output_padding")
        output_padding = ((None,) * rank if output_padding is None
                          else normalize_tuple(output_padding, rank, "output_padding"))
        return ConvTransposeLast(
            rank, weights[0], bias, normalize_tuple(cfg.get("strides", 1), rank, "strides"),
            padding, output_padding,
            normalize_tuple(cfg.get("dilation_rate", 1), rank, "dilation_rate"),
            cfg.get("activation"))
    return build


class PoolLast(nn.Module):
    """Keras' MaxPooling / AveragePooling on channels-last tensors ("same": TensorFlow's
    padding, max over the valid part of a window, average over its valid elements)."""

    def __init__(self, rank, kind, pool, strides, padding):
        super().__init__()
        self.rank, self.kind, self.pool, self.strides, self.padding = (rank, kind, pool, strides,
                                                                       padding)

    def forward(self, x):
        lead = x.shape[:-self.rank - 1]
        x = move_from_last(x.reshape(-1, *x.shape[-self.rank - 1:]), 1)
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d) if self.kind == "max" else (
            F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
        pool = pool[self.rank - 1]
        if self.padding == "same":
            pads = _same_pads(x.shape[2:], self.pool, self.strides, (1,) * self.rank)
            if self.kind == "max":
                y = pool(F.pad(x, pads, value=-math.inf), self.pool, self.strides)
            else:
                ones = torch.ones_like(x[:1, :1])
                y = (pool(F.pad(x, pads), self.pool, self.strides)
                     / pool(F.pad(ones, pads), self.pool, self.strides))
        else:
            y = pool(x, self.pool, self.strides)
        y = move_to_last(y, 1)
        return y.reshape(*lead, *y.shape[1:])


def _same_pads(spatial, kernel, strides, dilation):
    """F.pad's list (last dim first) of TensorFlow's "same" padding."""
    pads = []
    for n, k, s, d in zip(reversed(spatial), reversed(kernel), reversed(strides),
                          reversed(dilation)):
        before = same_pad_before(n, k, s, d)
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [before, total - before]
    return pads


def _pool(rank, kind):
    def build(cfg, weights):
        _check(cfg, "data_format", ("channels_last", None), "Pooling")
        padding = _check(cfg, "padding", ("valid", "same"), "Pooling")
        pool = normalize_tuple(cfg.get("pool_size", 2), rank, "pool_size")
        strides = cfg.get("strides")
        strides = pool if strides is None else normalize_tuple(strides, rank, "strides")
        return PoolLast(rank, kind, pool, strides, padding)
    return build


class UpSampleLast(nn.Module):
    """Keras' UpSampling1D/2D/3D (nearest: each element repeated) on channels-last tensors."""

    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = rank, size

    def forward(self, x):
        for i, s in enumerate(self.size):
            x = x.repeat_interleave(s, dim=x.dim() - 1 - self.rank + i)
        return x


def _upsample(rank):
    def build(cfg, weights):
        _check(cfg, "data_format", ("channels_last", None), "UpSampling")
        _check(cfg, "interpolation", ("nearest",), "UpSampling")
        key = "size" if "size" in cfg else "length"
        return UpSampleLast(rank, normalize_tuple(cfg.get(key, 2), rank, "size"))
    return build


class _Add(nn.Module):
    def forward(self, tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = out + t
        return out


class _Concatenate(nn.Module):
    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, tensors):
        return torch.cat(tensors, dim=self.axis)


class TimeDistributedLast(nn.Module):
    """Keras' TimeDistributed: the layer on every (sample, time step) frame."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        B, T = x.shape[:2]
        y = self.layer(x.reshape(B * T, *x.shape[2:]))
        return y.reshape(B, T, *y.shape[1:])


def _time_distributed(cfg, weights):
    inner = cfg.get("layer") or {}
    class_name = inner.get("class_name")
    if class_name in ("TimeDistributed", "InputLayer") or class_name not in _BUILDERS:
        raise ValueError(f"layer {cfg.get('name')!r}: TimeDistributed({class_name}) is not "
                         "supported by load_model")
    return TimeDistributedLast(_build(class_name, inner.get("config") or {}, weights,
                                      cfg.get("name")))


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
    "Conv1DTranspose": _conv_transpose(1),
    "Conv2DTranspose": _conv_transpose(2),
    "Conv3DTranspose": _conv_transpose(3),
    "MaxPooling1D": _pool(1, "max"),
    "MaxPooling2D": _pool(2, "max"),
    "MaxPooling3D": _pool(3, "max"),
    "AveragePooling1D": _pool(1, "avg"),
    "AveragePooling2D": _pool(2, "avg"),
    "AveragePooling3D": _pool(3, "avg"),
    "UpSampling1D": _upsample(1),
    "UpSampling2D": _upsample(2),
    "UpSampling3D": _upsample(3),
    "Add": lambda cfg, weights: _Add(),
    "Concatenate": lambda cfg, weights: _Concatenate(int(cfg.get("axis", -1))),
    "TimeDistributed": _time_distributed,
}
SUPPORTED_LAYERS = tuple(_BUILDERS)
