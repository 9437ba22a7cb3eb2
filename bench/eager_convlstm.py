"""The eager peers: the ConvLSTM most PyTorch code writes, cuDNN convolutions + PyTorch pointwise.

``eager_loop`` / ``EagerConvLSTM`` ("eager_cat"): per step, one channels-first convolution of
``cat(x_t, h)`` (``C_in + F`` channels in, ``4F`` out, symmetric "same" padding) followed by
PyTorch pointwise gate math in Keras order i, f, c, o. This is the common PyTorch ConvLSTM cell run
over the sequence; it is what the benchmark compares against.

``eager_hoisted_loop`` / ``EagerHoistedConvLSTM`` ("eager_hoisted"): the input convolution of all
``B·T`` frames first, as one cuDNN call (it does not depend on the state), then per step only the
recurrent convolution (``F`` channels in) + the same pointwise math: the best a PyTorch user gets
from cuDNN without writing kernels.

It takes the Keras-layout weights of ``convlstm_triton`` and converts them once to the combined
channels-first conv weight, so both peers can be given the same numbers:

    kernel (*k, C_in, 4F) + recurrent_kernel (*k, F, 4F)  ->  weight (4F, C_in + F, *k)

Only what such code supports: stride 1, no dilation, odd kernel sizes ("same" padding is then
symmetric and both convolutions share one output grid), no mask, no go_backwards.
"""

import torch
import torch.nn.functional as F
from torch import nn

from convlstm_triton.activations import torch_activation

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def keras_to_combined(kernel, recurrent_kernel):
    """kernel (*k, C_in, 4F), recurrent_kernel (*k, F, 4F) -> weight (4F, C_in + F, *k)."""
    rank = kernel.dim() - 2
    if rank not in CONV:
        raise ValueError(
            f"kernel must be (*k, C_in, 4F) with 1-3 dims k, got {tuple(kernel.shape)}"
        )
    filters = kernel.shape[-1] // 4
    expected = (*kernel.shape[:rank], filters, 4 * filters)
    if kernel.shape[-1] % 4 or tuple(recurrent_kernel.shape) != expected:
        raise ValueError(
            f"kernel {tuple(kernel.shape)} and recurrent_kernel {tuple(recurrent_kernel.shape)} "
            f"are not a ConvLSTM pair: recurrent_kernel should be {expected}"
        )
    return keras_to_torch(torch.cat([kernel, recurrent_kernel], dim=-2))  # (*k, C_in + F, 4F)


def combined_to_keras(weight, in_channels):
    """weight (4F, C_in + F, *k) -> (kernel (*k, C_in, 4F), recurrent_kernel (*k, F, 4F))."""
    channels_last = torch_to_keras(weight)  # (*k, C_in + F, 4F)
    return channels_last[..., :in_channels, :], channels_last[..., in_channels:, :]


def keras_to_torch(kernel):
    """One Keras conv kernel (*k, C, 4F) -> torch's (4F, C, *k)."""
    rank = kernel.dim() - 2
    return kernel.permute(rank + 1, rank, *range(rank)).contiguous()


def torch_to_keras(weight):
    """torch's (4F, C, *k) -> Keras (*k, C, 4F); a view."""
    rank = weight.dim() - 2
    return weight.permute(*range(2, rank + 2), 1, 0)


def to_keras_outputs(outputs):
    """(seq (B, T, F, *spatial), h, c (B, F, *spatial)) -> the Keras channels-last layout."""
    seq, h, c = outputs
    return seq.movedim(2, -1), h.movedim(1, -1), c.movedim(1, -1)


def symmetric_padding(kernel_size):
    """'same' padding of a stride-1 conv; only odd kernels pad the same amount on both sides."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"the eager peer pads symmetrically, so it supports odd kernel sizes only, got "
            f"{tuple(kernel_size)} (Keras 'same' pads even kernels more after)"
        )
    return tuple(k // 2 for k in kernel_size)


def _zero_state(x, filters, initial_state):
    """(h0, c0) each (B, F, *spatial): the given state, or zeros like x's frames."""
    if initial_state is not None:
        return initial_state
    batch, _, _, *spatial = x.shape
    return x.new_zeros(batch, filters, *spatial), x.new_zeros(batch, filters, *spatial)


def _cell(gates, c, act, rec_act):
    """The LSTM cell update from pre-activations (B, 4F, *spatial), gates i, f, c, o."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = rec_act(f) * c + rec_act(i) * act(g)
    return rec_act(o) * act(c), c


def eager_loop(x, weight, bias=None, initial_state=None, activation="tanh",
               recurrent_activation="sigmoid"):
    """The eager recurrence on channels-first tensors.

    x: (B, T, C_in, *spatial); weight: (4F, C_in + F, *k), k odd; bias: (4F,) or None;
    initial_state (h0, c0) each (B, F, *spatial) or None (zeros).
    Returns seq (B, T, F, *spatial), h and c (B, F, *spatial).
    """
    conv = CONV[weight.dim() - 2]
    padding = symmetric_padding(weight.shape[2:])
    act = torch_activation(activation)
    rec_act = torch_activation(recurrent_activation)
    h, c = _zero_state(x, weight.shape[0] // 4, initial_state)
    outputs = []
    for t in range(x.shape[1]):
        gates = conv(torch.cat([x[:, t], h], dim=1), weight, bias, padding=padding)
        h, c = _cell(gates, c, act, rec_act)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def eager_hoisted_loop(x, weight_x, weight_h, bias=None, initial_state=None, activation="tanh",
                       recurrent_activation="sigmoid"):
    """The eager recurrence with the input convolution hoisted out of the time loop.

    x: (B, T, C_in, *spatial); weight_x: (4F, C_in, *k) and weight_h: (4F, F, *k), the same odd
    k; bias: (4F,) or None; initial_state (h0, c0) each (B, F, *spatial) or None (zeros).
    Returns seq (B, T, F, *spatial), h and c (B, F, *spatial).
    """
    if weight_x.shape[2:] != weight_h.shape[2:]:
        raise ValueError(f"weight_x {tuple(weight_x.shape)} and weight_h "
                         f"{tuple(weight_h.shape)} must have the same kernel size")
    conv = CONV[weight_x.dim() - 2]
    padding = symmetric_padding(weight_x.shape[2:])
    act = torch_activation(activation)
    rec_act = torch_activation(recurrent_activation)
    batch, steps = x.shape[:2]
    # All B·T frames in one convolution: (B·T, C_in, *spatial) -> (B, T, 4F, *spatial).
    xg = conv(x.flatten(0, 1), weight_x, bias, padding=padding).unflatten(0, (batch, steps))
    h, c = _zero_state(x, weight_h.shape[0] // 4, initial_state)
    outputs = []
    for t in range(steps):
        h, c = _cell(xg[:, t] + conv(h, weight_h, padding=padding), c, act, rec_act)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


class EagerConvLSTM(nn.Module):
    """The eager peer as a module owning its combined weight, as a PyTorch model would.

    forward: x (B, T, C_in, *spatial) -> seq (B, T, F, *spatial), h and c (B, F, *spatial).
    """

    def __init__(self, weight, bias=None, activation="tanh", recurrent_activation="sigmoid"):
        super().__init__()
        if weight.dim() - 2 not in CONV:
            raise ValueError(
                f"weight must be (4F, C_in + F, *k) with 1-3 dims k, got {tuple(weight.shape)}"
            )
        symmetric_padding(weight.shape[2:])  # fail at construction, not at the first call
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.activation = activation
        self.recurrent_activation = recurrent_activation

    @classmethod
    def from_keras_weights(cls, kernel, recurrent_kernel, bias=None, **kwargs):
        """Build from Keras-layout weights: kernel (*k, C_in, 4F), recurrent_kernel (*k, F, 4F)."""
        with torch.no_grad():
            weight = keras_to_combined(kernel, recurrent_kernel)
        return cls(weight, bias, **kwargs)

    def forward(self, x, initial_state=None):
        return eager_loop(x, self.weight, self.bias, initial_state, self.activation,
                          self.recurrent_activation)


def eager_conv_lstm(x, kernel, recurrent_kernel, bias=None, initial_state=None, *,
                    activation="tanh", recurrent_activation="sigmoid"):
    """The eager peer with ``conv_lstm``'s Keras (channels-last) layout in and out, for checks.

    x: (B, T, *spatial, C_in); initial_state (h0, c0) each (B, *spatial, F) or None.
    Returns seq (B, T, *spatial, F), h and c (B, *spatial, F). Stride 1, odd kernel, "same".
    Differentiable with respect to every argument (the weight conversion included).
    """
    state = None
    if initial_state is not None:
        state = tuple(s.movedim(-1, 1) for s in initial_state)
    weight = keras_to_combined(kernel, recurrent_kernel)
    return to_keras_outputs(eager_loop(x.movedim(-1, 2), weight, bias, state, activation,
                                       recurrent_activation))


class EagerHoistedConvLSTM(nn.Module):
    """The hoisted eager peer as a module owning its two conv weights.

    weight_x (4F, C_in, *k), weight_h (4F, F, *k), bias (4F,) or None.
    forward: x (B, T, C_in, *spatial) -> seq (B, T, F, *spatial), h and c (B, F, *spatial).
    """

    def __init__(self, weight_x, weight_h, bias=None, activation="tanh",
                 recurrent_activation="sigmoid"):
        super().__init__()
        if weight_x.dim() - 2 not in CONV or weight_x.shape[2:] != weight_h.shape[2:]:
            raise ValueError(
                f"weight_x (4F, C_in, *k) and weight_h (4F, F, *k) with the same 1-3 dims k, got "
                f"{tuple(weight_x.shape)} and {tuple(weight_h.shape)}"
            )
        symmetric_padding(weight_x.shape[2:])  # fail at construction, not at the first call
        self.weight_x = nn.Parameter(weight_x.detach().clone())
        self.weight_h = nn.Parameter(weight_h.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.activation = activation
        self.recurrent_activation = recurrent_activation

    @classmethod
    def from_keras_weights(cls, kernel, recurrent_kernel, bias=None, **kwargs):
        """Build from Keras-layout weights: kernel (*k, C_in, 4F), recurrent_kernel (*k, F, 4F)."""
        keras_to_combined(kernel, recurrent_kernel)  # validates the pair
        with torch.no_grad():
            return cls(keras_to_torch(kernel), keras_to_torch(recurrent_kernel), bias, **kwargs)

    def keras_grads(self):
        """The weights' gradients in Keras layout: (dkernel, drecurrent_kernel, dbias); None for
        a weight without a gradient."""
        dkernel, drecurrent = (None if g is None else torch_to_keras(g)
                               for g in (self.weight_x.grad, self.weight_h.grad))
        return dkernel, drecurrent, None if self.bias is None else self.bias.grad

    def forward(self, x, initial_state=None):
        return eager_hoisted_loop(x, self.weight_x, self.weight_h, self.bias, initial_state,
                                  self.activation, self.recurrent_activation)


def eager_hoisted_conv_lstm(x, kernel, recurrent_kernel, bias=None, initial_state=None, *,
                            activation="tanh", recurrent_activation="sigmoid"):
    """``eager_hoisted_loop`` with ``conv_lstm``'s Keras layout in and out, for checks (shapes as
    ``eager_conv_lstm``). Differentiable with respect to every argument."""
    state = None
    if initial_state is not None:
        state = tuple(s.movedim(-1, 1) for s in initial_state)
    return to_keras_outputs(eager_hoisted_loop(x.movedim(-1, 2), keras_to_torch(kernel),
                                               keras_to_torch(recurrent_kernel), bias, state,
                                               activation, recurrent_activation))
