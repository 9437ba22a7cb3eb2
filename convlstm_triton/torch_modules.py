"""PyTorch-native ConvLSTM modules: ``ConvLSTMCell`` (one step) and ``ConvLSTM`` (like ``nn.LSTM``).

Both are **channels-first**, as torch's conv modules: a frame is ``(B, C, *spatial)``. Both run on
:func:`convlstm_triton.functional.conv_lstm` (the cell with ``T = 1``), so they use the Triton
kernels for CUDA tensors (and on the CPU with ``backend="triton"`` under ``TRITON_INTERPRET=1``),
the PyTorch reference otherwise; the tensors are moved to channels-last around the call.

* **Rank** (1, 2 or 3 spatial dims) is fixed at construction, because the parameter shapes depend
  on it: the length of a tuple ``kernel_size`` gives it, or the keyword ``rank=``; an int
  ``kernel_size`` without ``rank`` means 2D. Inputs of another rank are a ValueError.
* **Parameters** have the Keras layout of :mod:`convlstm_triton.keras.layers`: ``kernel``
  ``(*kernel_size, C_in, 4H)``, ``recurrent_kernel`` ``(*kernel_size, H, 4H)``, ``bias`` ``(4H,)``,
  gates ``i, f, c, o`` (nn.LSTM's ``i, f, g, o``). One bias (nn.LSTM's ``b_ih + b_hh``).
* **Initialization** follows ``nn.LSTM``: every parameter (bias included, no forget-gate offset)
  is drawn from ``U(-b, b)`` with ``b = 1 / sqrt(H * prod(kernel_size))`` -- nn.LSTM's
  ``1 / sqrt(H)`` with the recurrent conv's receptive field ``H * prod(kernel_size)`` as the fan,
  so ``kernel_size = 1`` gives exactly nn.LSTM's init. For a Keras-style unit forget bias, set
  ``bias[H:2H] = 1`` after construction (or override ``reset_parameters``).
* Not supported: unbatched inputs, packed sequences / masks (use the Keras-style layers or
  ``conv_lstm(mask=...)``), ``proj_size``, strides and dilation.
"""

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .activations import check_activation
from .functional import conv_lstm
from .geometry import ConvGeometry, move_from_last, move_to_last, normalize_tuple
from .validation import BACKENDS, check_cuda_graph_option

__all__ = ["ConvLSTMCell", "ConvLSTM"]


_SPATIAL_NAMES = {1: "W", 2: "H, W", 3: "D, H, W"}


def _check_positive_int(value, argument):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return value


def _check_bool(value, argument):
    if not isinstance(value, bool):
        raise TypeError(f"{argument} must be a bool, got {type(value).__name__}")
    return value


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _resolve_rank(kernel_sizes, rank):
    """Spatial rank from ``rank=`` or the tuple kernel sizes in ``kernel_sizes`` (default 2)."""
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank not in (1, 2, 3):
            raise ValueError(f"rank must be None, 1, 2 or 3, got {rank!r}")
        return rank
    lengths = set()
    for k in kernel_sizes:
        if isinstance(k, (tuple, list)):
            lengths.add(len(k))
    if len(lengths) > 1:
        raise ValueError(
            f"kernel_size: per-layer kernel sizes must all have the same number of spatial dims, "
            f"got {kernel_sizes!r}"
        )
    rank = lengths.pop() if lengths else 2
    if rank not in (1, 2, 3):
        raise ValueError(f"kernel_size must have 1 to 3 spatial dims, got {kernel_sizes!r}")
    return rank


def _init_bound(hidden, kernel_size):
    return 1.0 / math.sqrt(hidden * math.prod(kernel_size))


def _frame_layout(rank):
    return f"(B, C, {_SPATIAL_NAMES[rank]})"


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step, channels-first, padding "same", stride 1 (like ``nn.LSTMCell``).

    ``h, c = cell(x_t, (h, c))`` with ``x_t`` ``(B, in_channels, *spatial)`` and ``h``, ``c``
    ``(B, hidden_channels, *spatial)``; ``hx=None`` starts from zeros.

    Args:
        in_channels, hidden_channels: C_in and H.
        kernel_size: int or tuple of ``rank`` ints (a tuple's length gives the rank).
        bias: learn a bias ``(4H,)``.
        activation, recurrent_activation: Keras activation names (default tanh, sigmoid), or
            callables (those run on the reference implementation, with a one-time warning).
        rank: 1, 2 or 3 spatial dims; None: ``len(kernel_size)`` for a tuple, else 2.
        peephole: add peephole connections (Shi et al. 2015) with per-channel weights
            ``peephole_weights (3, H)`` = (w_ci, w_cf, w_co): i and f see ``w_ci * c_prev``,
            ``w_cf * c_prev``, o sees ``w_co * c``; fused into the kernels.
        backend: "auto" (CUDA -> Triton kernels, CPU -> reference), "triton", "reference".
        cuda_graph: False, True or "auto": ``conv_lstm``'s option (CUDA graphs of the Triton
            path's time loop, ``convlstm_triton.cuda_graphs``). When training, every step whose
            backward is still pending needs a graph of its own, so a cell stepped T times per
            backward holds up to T graphs (the cache's size bounds it; beyond, the plain path).
        device, dtype: of the parameters.

    Parameters ``kernel (*k, C_in, 4H)``, ``recurrent_kernel (*k, H, 4H)``, ``bias (4H,)``,
    gates i, f, c, o; init ``U(-b, b)``, ``b = 1/sqrt(H * prod(k))`` (see the module docstring).
    """

    def __init__(self, in_channels, hidden_channels, kernel_size, bias=True, activation="tanh",
                 recurrent_activation="sigmoid", *, rank=None, peephole=False, backend="auto",
                 cuda_graph=False, device=None, dtype=None):
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.hidden_channels = _check_positive_int(hidden_channels, "hidden_channels")
        self.rank = _resolve_rank([kernel_size], rank)
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size")
        self.activation = check_activation(activation, "activation")
        self.recurrent_activation = check_activation(recurrent_activation,
                                                     "recurrent_activation")
        self.backend = _check_backend(backend)
        self.cuda_graph = check_cuda_graph_option(cuda_graph)
        _check_bool(bias, "bias")
        factory = {"device": device, "dtype": dtype}
        h4 = 4 * self.hidden_channels
        self.kernel = nn.Parameter(torch.empty(self.kernel_size + (self.in_channels, h4),
                                               **factory))
        self.recurrent_kernel = nn.Parameter(
            torch.empty(self.kernel_size + (self.hidden_channels, h4), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(h4, **factory))
        else:
            self.register_parameter("bias", None)
        if _check_bool(peephole, "peephole"):
            self.peephole_weights = nn.Parameter(torch.empty(3, self.hidden_channels, **factory))
        else:
            self.register_parameter("peephole_weights", None)
        self.reset_parameters()

    def reset_parameters(self):
        """nn.LSTM's init: every parameter ``U(-b, b)``, ``b = 1/sqrt(H * prod(kernel_size))``."""
        bound = _init_bound(self.hidden_channels, self.kernel_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, input, hx=None):
        """``input`` ``(B, C_in, *spatial)``; ``hx`` None or ``(h, c)``, each ``(B, H, *spatial)``.

        Returns ``(h, c)``, each ``(B, H, *spatial)``.
        """
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() != self.rank + 2 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"input must have shape {_frame_layout(self.rank)} with C={self.in_channels} "
                f"(a {self.rank}D cell: rank comes from kernel_size or rank=), "
                f"got {tuple(input.shape)}"
            )
        state = None
        if hx is not None:
            if isinstance(hx, torch.Tensor) or not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be None or a pair (h, c) of tensors")
            expected = (input.shape[0], self.hidden_channels, *input.shape[2:])
            for value, name in zip(hx, ("hx[0] (h)", "hx[1] (c)")):
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
                if tuple(value.shape) != expected:
                    raise ValueError(f"{name} must have shape {expected} (B, hidden_channels, "
                                     f"*spatial), got {tuple(value.shape)}")
            state = (move_to_last(hx[0], 1), move_to_last(hx[1], 1))
        _, h, c = conv_lstm(
            move_to_last(input, 1).unsqueeze(1), self.kernel, self.recurrent_kernel, self.bias,
            state, padding="same", activation=self.activation,
            recurrent_activation=self.recurrent_activation, peephole=self.peephole_weights,
            backend=self.backend, cuda_graph=self.cuda_graph,
        )
        return move_from_last(h, 1), move_from_last(c, 1)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation != "tanh":
            s += f", activation={self.activation!r}"
        if self.recurrent_activation != "sigmoid":
            s += f", recurrent_activation={self.recurrent_activation!r}"
        if self.peephole_weights is not None:
            s += ", peephole=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.cuda_graph is not False:
            s += f", cuda_graph={self.cuda_graph!r}"
        return s


class ConvLSTM(nn.Module):
    """Multi-layer, optionally bidirectional ConvLSTM shaped like ``nn.LSTM``, channels-first.

    ``output, (h_n, c_n) = m(input, hx)``:

    * ``input`` ``(B, T, C_in, *spatial)`` (``batch_first=True``, the default here) or
      ``(T, B, C_in, *spatial)``.
    * ``output``: the last layer's sequence ``(B, T, D * H_last, *out_spatial)`` (or time-first),
      ``D = 2`` if bidirectional; the reverse direction's outputs are time-aligned with the
      forward's (``output[:, t]`` holds both directions' outputs for frame t) and concatenated
      after them along channels, as in nn.LSTM.
    * ``h_n``, ``c_n``: final states ``(num_layers * D, B, H, *out_spatial)``, entry ``l * D + d``
      for layer l, direction d (nn.LSTM's layout). When layers differ in hidden size or spatial
      shape (per-layer ``hidden_channels``, or ``padding="valid"`` with several layers) they
      cannot be stacked: ``h_n`` and ``c_n`` are then tuples of ``num_layers * D`` tensors
      ``(B, H_l, *spatial_l)``, so ``h_n[k]`` means the same in both cases.
    * ``hx``: None (zeros) or ``(h_0, c_0)`` in the same layout as ``(h_n, c_n)``: stacked tensors,
      or sequences of ``num_layers * D`` tensors (always accepted).

    Args:
        in_channels: C_in of the first layer; layer l > 0 takes ``D * H_{l-1}`` channels.
        hidden_channels: int, or a list/tuple of ``num_layers`` ints (one per layer).
        kernel_size: int or tuple (one kernel size for every layer), or a **list** of
            ``num_layers`` ints/tuples (one per layer). A tuple is always a single kernel size.
        num_layers, bias, batch_first, bidirectional: as in nn.LSTM (bools must be bools).
        dropout: probability in [0, 1] of ``F.dropout`` on each layer's output except the last,
            in training mode only (nn.LSTM's).
        padding: "same" (spatial shape kept) or "valid" (each layer's input conv shrinks it by
            ``k - 1``); the recurrent conv is always "same", stride 1.
        activation, recurrent_activation: Keras activation names (default tanh, sigmoid), or
            callables (those run on the reference implementation, with a one-time warning).
        rank: 1, 2 or 3; None: the length of the tuple kernel sizes, else 2.
        backend: "auto" (CUDA -> Triton kernels, CPU -> reference), "triton", "reference".
        cuda_graph: False, True or "auto": ``conv_lstm``'s option (CUDA graphs of the Triton
            path's time loop, ``convlstm_triton.cuda_graphs``).
        device, dtype: of the parameters.

    Parameters, per layer l and direction (suffix ``_reverse`` for the reverse one), in the Keras
    layout: ``kernel_l{l}`` ``(*k_l, C_l, 4H_l)``, ``recurrent_kernel_l{l}`` ``(*k_l, H_l, 4H_l)``,
    ``bias_l{l}`` ``(4H_l,)``; ``all_weights`` lists them per (layer, direction) as nn.LSTM does.
    Init ``U(-b, b)``, ``b = 1/sqrt(H_l * prod(k_l))`` (see the module docstring).
    """

    def __init__(self, in_channels, hidden_channels, kernel_size, num_layers=1, bias=True,
                 batch_first=True, bidirectional=False, dropout=0.0, padding="same",
                 activation="tanh", recurrent_activation="sigmoid", *, rank=None,
                 peephole=False, backend="auto", cuda_graph=False, device=None, dtype=None):
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.peephole = _check_bool(peephole, "peephole")
        self.num_layers = _check_positive_int(num_layers, "num_layers")
        L = self.num_layers
        if isinstance(hidden_channels, (list, tuple)):
            if len(hidden_channels) != L:
                raise ValueError(
                    f"hidden_channels must be an int or have one entry per layer "
                    f"(num_layers={L}), got {hidden_channels!r}"
                )
            hidden = [_check_positive_int(h, f"hidden_channels[{i}]")
                      for i, h in enumerate(hidden_channels)]
        else:
            hidden = [_check_positive_int(hidden_channels, "hidden_channels")] * L
        if isinstance(kernel_size, list):
            if len(kernel_size) != L:
                raise ValueError(
                    f"kernel_size is a list, so it gives one kernel size per layer: expected "
                    f"{L} entries (num_layers={L}), got {kernel_size!r}; give a single kernel "
                    "size as an int or a tuple"
                )
            sizes = list(kernel_size)
            names = [f"kernel_size[{i}]" for i in range(L)]
        else:
            sizes = [kernel_size] * L
            names = ["kernel_size"] * L
        self.rank = _resolve_rank(sizes, rank)
        self.hidden_channels = tuple(hidden)
        self.kernel_size = tuple(normalize_tuple(k, self.rank, n) for k, n in zip(sizes, names))
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.bidirectional = _check_bool(bidirectional, "bidirectional")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"dropout must be a float in [0, 1], got {type(dropout).__name__}")
        if not 0.0 <= dropout <= 1.0:  # also rejects NaN
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and L == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout applies between "
                "layers (to every layer's output but the last), as in nn.LSTM", stacklevel=2)
        if not isinstance(padding, str) or padding.lower() not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.padding = padding.lower()
        self.activation = check_activation(activation, "activation")
        self.recurrent_activation = check_activation(recurrent_activation,
                                                     "recurrent_activation")
        self.backend = _check_backend(backend)
        self.cuda_graph = check_cuda_graph_option(cuda_graph)

        factory = {"device": device, "dtype": dtype}
        self._weight_names = []  # per (layer, direction): [kernel, recurrent_kernel(, bias)]
        for layer in range(L):
            h4 = 4 * hidden[layer]
            c_in = self.in_channels if layer == 0 else self.num_directions * hidden[layer - 1]
            k = self.kernel_size[layer]
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"kernel": k + (c_in, h4), "recurrent_kernel": k + (hidden[layer], h4)}
                if self.bias:
                    shapes["bias"] = (h4,)
                if self.peephole:
                    shapes["peephole_weights"] = (3, hidden[layer])
                names = []
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name + suffix)
                self._weight_names.append(names)
        self.reset_parameters()

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self):
        """``[[kernel, recurrent_kernel(, bias)] per (layer, direction)]``, index ``l * D + d``."""
        return [[getattr(self, name) for name in names] for names in self._weight_names]

    def reset_parameters(self):
        """nn.LSTM's init per layer: ``U(-b, b)``, ``b = 1/sqrt(H_l * prod(kernel_size_l))``."""
        for index, weights in enumerate(self.all_weights):
            layer = index // self.num_directions
            bound = _init_bound(self.hidden_channels[layer], self.kernel_size[layer])
            for p in weights:
                nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self):
        """No-op, for code written for nn.LSTM (there is no cuDNN weight buffer here)."""

    def state_shapes(self, batch, spatial):
        """Shapes ``(B, H_l, *spatial_l)`` of ``h_n[k]`` for an input of ``spatial`` shape."""
        shapes = []
        for layer in range(self.num_layers):
            try:
                spatial = ConvGeometry.build(
                    tuple(spatial), self.kernel_size[layer], (1,) * self.rank,
                    (1,) * self.rank, self.padding).out_spatial
            except ValueError as e:
                raise ValueError(f"input: layer {layer}: {e}") from None
            shapes += [(batch, self.hidden_channels[layer], *spatial)] * self.num_directions
        return shapes

    def _check_state(self, value, name, shapes):
        """``value`` (stacked tensor or sequence) -> list of channels-first per-entry tensors."""
        n = len(shapes)
        stackable = all(s == shapes[0] for s in shapes)
        if isinstance(value, torch.Tensor):
            if not stackable:
                raise ValueError(
                    f"{name} must be a sequence of {n} tensors {shapes}: the layers' hidden "
                    "sizes or spatial shapes differ, so the states cannot be stacked"
                )
            expected = (n, *shapes[0])
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"{name} must have shape {expected} (num_layers * num_directions, B, "
                    f"hidden_channels, *spatial), got {tuple(value.shape)}"
                )
            return list(value.unbind(0))
        if not isinstance(value, (tuple, list)) or len(value) != n:
            raise TypeError(
                f"{name} must be a tensor ({n}, B, H, *spatial) or a sequence of {n} tensors "
                "(num_layers * num_directions)"
            )
        for k, (t, shape) in enumerate(zip(value, shapes)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}[{k}] must have shape {shape}, got {tuple(t.shape)}")
        return list(value)

    def forward(self, input, hx=None):
        """Run all layers over ``input``; returns ``(output, (h_n, c_n))`` (see the class doc)."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        layout = f"({'B, T' if self.batch_first else 'T, B'}, C, {_SPATIAL_NAMES[self.rank]})"
        if input.dim() != self.rank + 3 or input.shape[2] != self.in_channels:
            raise ValueError(
                f"input must have shape {layout} with C={self.in_channels} (batch_first="
                f"{self.batch_first}; a {self.rank}D ConvLSTM: rank comes from kernel_size or "
                f"rank=), got {tuple(input.shape)}"
            )
        x = input if self.batch_first else input.transpose(0, 1)
        shapes = self.state_shapes(x.shape[0], x.shape[3:])
        states = [None] * len(shapes)
        if hx is not None:
            if isinstance(hx, torch.Tensor) or not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be None or a pair (h_0, c_0)")
            h0 = self._check_state(hx[0], "h_0", shapes)
            c0 = self._check_state(hx[1], "c_0", shapes)
            states = [(move_to_last(h, 1), move_to_last(c, 1)) for h, c in zip(h0, c0)]

        x = move_to_last(x, 2)  # (B, T, *spatial, C): conv_lstm is channels-last
        h_n, c_n = [], []
        D = self.num_directions
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                index = layer * D + direction
                weights = {name.rsplit("_l", 1)[0]: getattr(self, name)
                           for name in self._weight_names[index]}
                seq, h, c = conv_lstm(
                    x, weights["kernel"], weights["recurrent_kernel"], weights.get("bias"),
                    states[index], padding=self.padding, activation=self.activation,
                    recurrent_activation=self.recurrent_activation,
                    go_backwards=direction == 1, peephole=weights.get("peephole_weights"),
                    backend=self.backend, cuda_graph=self.cuda_graph,
                )
                # go_backwards returns the sequence in processing order: re-align it in time.
                outputs.append(seq.flip(1) if direction == 1 else seq)
                h_n.append(move_from_last(h, 1))
                c_n.append(move_from_last(c, 1))
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
        output = move_from_last(x, 2)
        if not self.batch_first:
            output = output.transpose(0, 1)
        if all(s == shapes[0] for s in shapes):
            return output, (torch.stack(h_n), torch.stack(c_n))
        return output, (tuple(h_n), tuple(c_n))

    def extra_repr(self):
        hidden = (self.hidden_channels[0] if len(set(self.hidden_channels)) == 1
                  else list(self.hidden_channels))
        kernel = (self.kernel_size[0] if len(set(self.kernel_size)) == 1
                  else list(self.kernel_size))
        s = f"{self.in_channels}, {hidden}, kernel_size={kernel}"
        defaults = {
            "num_layers": (1, self.num_layers),
            "bias": (True, self.bias),
            "batch_first": (True, self.batch_first),
            "bidirectional": (False, self.bidirectional),
            "dropout": (0.0, self.dropout),
            "padding": ("same", self.padding),
            "activation": ("tanh", self.activation),
            "recurrent_activation": ("sigmoid", self.recurrent_activation),
            "peephole": (False, self.peephole),
            "backend": ("auto", self.backend),
            "cuda_graph": (False, self.cuda_graph),
        }
        return s + "".join(f", {k}={v!r}" for k, (d, v) in defaults.items() if v != d)
