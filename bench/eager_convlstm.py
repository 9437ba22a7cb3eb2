"""The eager peer: the ConvLSTM most PyTorch code writes, one cuDNN convolution per time step.

Per step, one channels-first convolution of ``cat(x_t, h)`` (``C_in + F`` channels in, ``4F`` out,
symmetric "same" padding) followed by PyTorch pointwise gate math in Keras order i, f, c, o. This is
the common PyTorch ConvLSTM cell run over the sequence; it is what the benchmark compares against.

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
    combined = torch.cat([kernel, recurrent_kernel], dim=-2)  # (*k, C_in + F, 4F)
    return combined.permute(rank + 1, rank, *range(rank)).contiguous()


def combined_to_keras(weight, in_channels):
    """weight (4F, C_in + F, *k) -> (kernel (*k, C_in, 4F), recurrent_kernel (*k, F, 4F))."""
    rank = weight.dim() - 2
    channels_last = weight.permute(*range(2, rank + 2), 1, 0)  # (*k, C_in + F, 4F)
    return channels_last[..., :in_channels, :], channels_last[..., in_channels:, :]


def symmetric_padding(kernel_size):
    """'same' padding of a stride-1 conv; only odd kernels pad the same amount on both sides."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"the eager peer pads symmetrically, so it supports odd kernel sizes only, got "
            f"{tuple(kernel_size)} (Keras 'same' pads even kernels more after)"
        )
    return tuple(k // 2 for k in kernel_size)


def eager_loop(x, weight, bias=None, initial_state=None, activation="tanh",
               recurrent_activation="sigmoid"):
    """The eager recurrence on channels-first tensors.

    x: (B, T, C_in, *spatial); weight: (4F, C_in + F, *k), k odd; bias: (4F,) or None;
    initial_state (h0, c0) each (B, F, *spatial) or None (zeros).
    Returns seq (B, T, F, *spatial), h and c (B, F, *spatial).
    """
    rank = weight.dim() - 2
    conv = CONV[rank]
    padding = symmetric_padding(weight.shape[2:])
    act = torch_activation(activation)
    rec_act = torch_activation(recurrent_activation)
    batch, steps, _, *spatial = x.shape
    filters = weight.shape[0] // 4
    if initial_state is None:
        h = x.new_zeros(batch, filters, *spatial)
        c = x.new_zeros(batch, filters, *spatial)
    else:
        h, c = initial_state
    outputs = []
    for t in range(steps):
        gates = conv(torch.cat([x[:, t], h], dim=1), weight, bias, padding=padding)
        i, f, g, o = gates.chunk(4, dim=1)
        c = rec_act(f) * c + rec_act(i) * act(g)
        h = rec_act(o) * act(c)
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
    seq, h, c = eager_loop(x.movedim(-1, 2), keras_to_combined(kernel, recurrent_kernel), bias,
                           state, activation, recurrent_activation)
    return seq.movedim(2, -1), h.movedim(1, -1), c.movedim(1, -1)
