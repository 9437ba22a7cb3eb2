"""A drop-in for ndrplz/ConvLSTM_pytorch's ``ConvLSTMCell`` and ``ConvLSTM`` (the most used
PyTorch ConvLSTM), on this library's kernels: same constructor, inputs, outputs and
``state_dict`` keys and shapes (``cell_list.{i}.conv.weight`` of shape
``(4·hidden, input + hidden, kh, kw)``, gates i, f, o, g; ``cell_list.{i}.conv.bias``), so a
checkpoint of the original loads unchanged and ours loads back into the original.

    from convlstm_triton.compat import ConvLSTM      # was: from convlstm import ConvLSTM

Differences, all additions: ``hidden_state`` may be given (a list of ``(h, c)`` per layer; the
original raises), an int ``kernel_size`` is accepted, and ``backend=`` ("auto": the Triton
kernels on CUDA, the reference on a CPU; "triton"; "reference") as on every layer here. Even
kernel sizes are refused: the original pads ``k // 2`` on both sides, which grows the output by
one pixel per even dim, and then fails concatenating the next step's input with the grown
state.

The parameters are kept in this library's layout (``kernel (kh, kw, C_in, 4H)``,
``recurrent_kernel (kh, kw, H, 4H)``, gates i, f, c, o): nothing is re-laid per call; only
``state_dict`` / ``load_state_dict`` convert. ``from_concat_conv`` turns any "one conv over
``[x, h]`` into four gates" module into a ``ConvLSTM2D``.
"""

import math

import torch
from torch import nn

from .functional import conv_lstm
from .torch_modules import _check_backend

__all__ = ["ConvLSTMCell", "ConvLSTM", "from_concat_conv", "concat_to_keras", "keras_to_concat"]

def _gate_order(gate_order):
    order = gate_order.lower().replace("g", "c")
    if sorted(order) != ["c", "f", "i", "o"]:
        raise ValueError(f"gate_order must name the gates i, f, o and g (or c) once each, e.g. "
                         f"'ifog' or 'ifco', got {gate_order!r}")
    return order


def concat_to_keras(weight, bias, input_dim, gate_order="ifog", input_first=True):
    """(kernel, recurrent_kernel, bias) in this library's layout from a conv over the
    concatenation of x and h: ``weight (4H, C_in + H, *k)`` with gate blocks in ``gate_order``,
    x's channels first (``input_first``); bias ``(4H,)`` or None."""
    order = _gate_order(gate_order)
    hidden = weight.shape[0] // 4
    if weight.shape[0] != 4 * hidden or weight.shape[1] != input_dim + hidden:
        raise ValueError(f"weight: expected (4·H, input_dim + H, *k) with input_dim="
                         f"{input_dim}, got {tuple(weight.shape)}")
    blocks = weight.split(hidden, 0)
    w = torch.cat([blocks[order.index(g)] for g in "ifco"], 0)
    wx, wh = (w[:, :input_dim], w[:, input_dim:]) if input_first else (
        w[:, hidden:], w[:, :hidden])
    rank = weight.dim() - 2
    to_keras = (*range(2, 2 + rank), 1, 0)
    if bias is not None:
        parts = bias.split(hidden, 0)
        bias = torch.cat([parts[order.index(g)] for g in "ifco"], 0)
    return wx.permute(to_keras), wh.permute(to_keras), bias


def keras_to_concat(kernel, recurrent_kernel, bias, gate_order="ifog", input_first=True):
    """The inverse of ``concat_to_keras``: ``(weight (4H, C_in + H, *k), bias)``."""
    order = _gate_order(gate_order)
    rank = kernel.dim() - 2
    to_torch = (rank + 1, rank, *range(rank))
    wx, wh = kernel.permute(to_torch), recurrent_kernel.permute(to_torch)
    w = torch.cat([wx, wh] if input_first else [wh, wx], 1)
    hidden = w.shape[0] // 4
    blocks = dict(zip("ifco", w.split(hidden, 0)))
    weight = torch.cat([blocks[g] for g in order], 0)
    if bias is not None:
        parts = dict(zip("ifco", bias.split(hidden, 0)))
        bias = torch.cat([parts[g] for g in order], 0)
    return weight, bias


def _pair(kernel_size, what):
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    if (not isinstance(kernel_size, (tuple, list)) or len(kernel_size) != 2
            or not all(isinstance(k, int) and k > 0 for k in kernel_size)):
        raise ValueError(f"{what}: expected (kh, kw) of positive ints, got {kernel_size!r}")
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"{what} {tuple(kernel_size)}: even kernel sizes are not supported "
                         "(ConvLSTM_pytorch pads k // 2 on both sides: an even kernel grows "
                         "the state by a pixel, and its next step fails)")
    return tuple(kernel_size)


class ConvLSTMCell(nn.Module):
    """ConvLSTM_pytorch's cell: ``forward(input_tensor (B, C, H, W), cur_state [h, c])`` ->
    ``(h_next, c_next)``, each ``(B, hidden_dim, H, W)``."""

    def __init__(self, input_dim, hidden_dim, kernel_size, bias, *, backend="auto",
                 device=None, dtype=None):
        super().__init__()
        _check_backend(backend)
        for name, value in (("input_dim", input_dim), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        self.backend = backend
        kh, kw = self.kernel_size
        factory = {"device": device, "dtype": dtype}
        self.kernel = nn.Parameter(torch.empty(kh, kw, input_dim, 4 * hidden_dim, **factory))
        self.recurrent_kernel = nn.Parameter(
            torch.empty(kh, kw, hidden_dim, 4 * hidden_dim, **factory))
        self.bias = nn.Parameter(torch.empty(4 * hidden_dim, **factory)) if bias else None
        self.reset_parameters()
        self._register_state_dict_hook(_concat_state_dict)
        self._register_load_state_dict_pre_hook(_load_concat_state_dict, with_module=True)

    def reset_parameters(self):
        """nn.Conv2d's initialization of the original's concatenated conv (the same draws, in
        the same order: under one seed, the same weights as the original)."""
        kh, kw = self.kernel_size
        weight = torch.empty(4 * self.hidden_dim, self.input_dim + self.hidden_dim, kh, kw,
                             device=self.kernel.device, dtype=self.kernel.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bias = None
        if self.bias is not None:
            bound = 1 / math.sqrt(weight[0].numel())
            bias = torch.empty_like(self.bias).uniform_(-bound, bound)
        self._set_concat(weight, bias)

    def _set_concat(self, weight, bias):
        kernel, recurrent, bias = concat_to_keras(weight, bias, self.input_dim)
        with torch.no_grad():
            self.kernel.copy_(kernel)
            self.recurrent_kernel.copy_(recurrent)
            if self.bias is not None:
                self.bias.copy_(bias)

    def concat_weight(self):
        """``(weight (4H, input + hidden, kh, kw), bias)`` as the original's ``conv`` holds
        them (gates i, f, o, g), differentiable."""
        return keras_to_concat(self.kernel, self.recurrent_kernel, self.bias)

    def forward(self, input_tensor, cur_state):
        h, c = cur_state
        x = input_tensor.permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, H, W, C)
        _, h, c = conv_lstm(x, self.kernel, self.recurrent_kernel, self.bias,
                            (h.permute(0, 2, 3, 1), c.permute(0, 2, 3, 1)), padding="same",
                            backend=self.backend)
        return h.permute(0, 3, 1, 2), c.permute(0, 3, 1, 2)

    def init_hidden(self, batch_size, image_size):
        height, width = image_size
        zeros = (batch_size, self.hidden_dim, height, width)
        return (torch.zeros(zeros, device=self.kernel.device, dtype=self.kernel.dtype),
                torch.zeros(zeros, device=self.kernel.device, dtype=self.kernel.dtype))

    def extra_repr(self):
        return (f"{self.input_dim}, {self.hidden_dim}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")


def _concat_state_dict(module, state_dict, prefix, local_metadata):
    """state_dict hook: the original's keys and layout (conv.weight, conv.bias).

    Not while ONNX's legacy exporter runs: it reads ``state_dict(keep_vars=True)`` for the
    module's variables, to make them the graph's inputs (initializers); ``conv.weight`` is
    computed from two of them, not one, so the live parameters stay under this module's names
    there (otherwise the export fails: "Cannot insert a Tensor that requires grad as a
    constant"). The exported file has the same weights, in this library's layout.
    """
    if torch.onnx.is_in_onnx_export():
        return state_dict
    weight, bias = keras_to_concat(state_dict.pop(prefix + "kernel"),
                                   state_dict.pop(prefix + "recurrent_kernel"),
                                   state_dict.pop(prefix + "bias", None))
    state_dict[prefix + "conv.weight"] = weight.contiguous()
    if bias is not None:
        state_dict[prefix + "conv.bias"] = bias
    return state_dict


def _load_concat_state_dict(module, state_dict, prefix, local_metadata, strict, missing_keys,
                            unexpected_keys, error_msgs):
    """load_state_dict pre-hook: the original's conv.weight / conv.bias into our layout."""
    key = prefix + "conv.weight"
    if key not in state_dict:
        return
    weight = state_dict.pop(key)
    bias = state_dict.pop(prefix + "conv.bias", None)
    expected = (4 * module.hidden_dim, module.input_dim + module.hidden_dim,
                *module.kernel_size)
    if tuple(weight.shape) != expected:
        error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                          f"{tuple(weight.shape)}, the module expects {expected}")
        return
    kernel, recurrent, bias = concat_to_keras(weight, bias, module.input_dim)
    state_dict[prefix + "kernel"] = kernel
    state_dict[prefix + "recurrent_kernel"] = recurrent
    if bias is not None:
        state_dict[prefix + "bias"] = bias


class ConvLSTM(nn.Module):
    """ConvLSTM_pytorch's ``ConvLSTM``: input ``(T, B, C, H, W)`` (or ``(B, T, C, H, W)`` with
    ``batch_first``), returns ``(layer_output_list, last_state_list)``: per layer (or the last
    only) the output sequence ``(B, T, hidden, H, W)`` and ``[h, c]``."""

    def __init__(self, input_dim, hidden_dim, kernel_size, num_layers, batch_first=False,
                 bias=True, return_all_layers=False, *, backend="auto", device=None,
                 dtype=None):
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        kernel_size = kernel_size if isinstance(kernel_size, list) else [kernel_size] * num_layers
        hidden_dim = hidden_dim if isinstance(hidden_dim, list) else [hidden_dim] * num_layers
        if not len(kernel_size) == len(hidden_dim) == num_layers:
            raise ValueError(f"kernel_size and hidden_dim lists must have num_layers="
                             f"{num_layers} entries, got {len(kernel_size)} and "
                             f"{len(hidden_dim)}")
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.kernel_size = [_pair(k, f"kernel_size[{i}]") for i, k in enumerate(kernel_size)]
        self.num_layers, self.batch_first, self.bias = num_layers, batch_first, bias
        self.return_all_layers = return_all_layers
        self.cell_list = nn.ModuleList(
            ConvLSTMCell(input_dim if i == 0 else hidden_dim[i - 1], hidden_dim[i],
                         self.kernel_size[i], bias, backend=backend, device=device,
                         dtype=dtype)
            for i in range(num_layers))

    @property
    def backend(self):
        return self.cell_list[0].backend

    @backend.setter
    def backend(self, value):
        for cell in self.cell_list:
            cell.backend = value

    def forward(self, input_tensor, hidden_state=None):
        if input_tensor.dim() != 5:
            raise ValueError("input_tensor must be 5-D, (T, B, C, H, W) or with batch_first "
                             f"(B, T, C, H, W); got shape {tuple(input_tensor.shape)}")
        x = input_tensor if self.batch_first else input_tensor.transpose(0, 1)
        if hidden_state is not None and len(hidden_state) != self.num_layers:
            raise ValueError(f"hidden_state: one (h, c) per layer ({self.num_layers}), got "
                             f"{len(hidden_state)}")
        seq = x.permute(0, 1, 3, 4, 2)  # channels-last for the kernels, (B, T, H, W, C)
        outputs, states = [], []
        for i, cell in enumerate(self.cell_list):
            state = None
            if hidden_state is not None:
                h, c = hidden_state[i]
                state = (h.permute(0, 2, 3, 1), c.permute(0, 2, 3, 1))
            seq, h, c = conv_lstm(seq, cell.kernel, cell.recurrent_kernel, cell.bias, state,
                                  padding="same", backend=cell.backend)
            outputs.append(seq.permute(0, 1, 4, 2, 3))
            states.append([h.permute(0, 3, 1, 2), c.permute(0, 3, 1, 2)])
        if not self.return_all_layers:
            outputs, states = outputs[-1:], states[-1:]
        return outputs, states

    def _init_hidden(self, batch_size, image_size):
        return [cell.init_hidden(batch_size, image_size) for cell in self.cell_list]


def from_concat_conv(conv, hidden_dim, gate_order="ifog", input_first=True, backend="auto"):
    """A ``ConvLSTM2D`` (channels-first, ``return_sequences=True``, tanh / sigmoid, "same") with
    the weights of ``conv``, a ``nn.Conv2d`` over the concatenation of x and h into the four
    gates (``gate_order``: "ifog" ConvLSTM_pytorch, "ifgo"/"icfo" others, "ifco" Keras; x's
    channels first unless ``input_first=False``). Input ``(B, T, C, H, W)``."""
    from .keras.layers import ConvLSTM2D

    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    kernel_size = _pair(tuple(conv.kernel_size), "conv.kernel_size")
    same = tuple(k // 2 for k in kernel_size)
    if (tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1
            or tuple(conv.padding) != same or conv.padding_mode != "zeros"):
        raise ValueError(f"conv must be stride 1, dilation 1, groups 1, zero padding {same} "
                         f"(a 'same' conv); got stride {conv.stride}, dilation "
                         f"{conv.dilation}, groups {conv.groups}, padding {conv.padding} "
                         f"({conv.padding_mode})")
    if conv.out_channels != 4 * hidden_dim:
        raise ValueError(f"conv.out_channels must be 4 * hidden_dim = {4 * hidden_dim}, got "
                         f"{conv.out_channels}")
    input_dim = conv.in_channels - hidden_dim
    if input_dim < 1:
        raise ValueError(f"conv.in_channels ({conv.in_channels}) must be input channels + "
                         f"hidden_dim ({hidden_dim})")
    kernel, recurrent, bias = concat_to_keras(conv.weight.detach(),
                                              None if conv.bias is None else conv.bias.detach(),
                                              input_dim, gate_order, input_first)
    layer = ConvLSTM2D(hidden_dim, kernel_size, padding="same", data_format="channels_first",
                       return_sequences=True, use_bias=conv.bias is not None,
                       in_channels=input_dim, backend=backend, device=conv.weight.device,
                       dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.kernel.copy_(kernel)
        layer.recurrent_kernel.copy_(recurrent)
        if layer.bias is not None:
            layer.bias.copy_(bias)
    return layer
