"""Convolution geometry shared by the reference and the kernel launchers.

Keras/TF conventions: "valid" pads nothing; "same" pads
``pad_total = max((ceil(n/s) - 1) * s + (k - 1) * d + 1 - n, 0)`` with ``pad_total // 2`` before
(even kernels pad more after). The recurrent conv is always stride 1, "same", no dilation.
"""

from dataclasses import dataclass

import torch


def normalize_tuple(value, rank, argument):
    """An int or a sequence of ``rank`` positive ints -> tuple of ``rank`` ints."""
    if isinstance(value, (bool, str)):
        raise TypeError(
            f"{argument} must be an int or a tuple of {rank} ints, got {type(value).__name__}"
        )
    if isinstance(value, int):
        values = (value,) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(
                f"{argument} must be an int or a tuple of {rank} ints, got {type(value).__name__}"
            ) from None
        if len(values) != rank or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(f"{argument} must be an int or a tuple of {rank} ints, got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"{argument} must be positive, got {value!r}")
    return values


# Layout moves with non-negative axes only: ONNX's legacy (TorchScript) exporter writes
# movedim(-1, 1) as Transpose(perm=[0, -1, 1, 2]), which ONNX Runtime refuses to load.
def move_to_last(t, axis):
    """``t`` with its dim ``axis`` (the channels) moved to the end: ``movedim(axis, -1)``."""
    return t.movedim(axis, t.dim() - 1)


def move_from_last(t, axis):
    """``t`` with its last dim (the channels) moved to ``axis``: ``movedim(-1, axis)``."""
    return t.movedim(t.dim() - 1, axis)


def same_pad_before(size, kernel, stride, dilation):
    out = -(-size // stride)
    pad_total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return pad_total // 2


def conv_output_size(size, kernel, stride, dilation, padding):
    if padding == "same":
        return -(-size // stride)
    return (size - (kernel - 1) * dilation - 1) // stride + 1


_built = {}  # ConvGeometry.build's arguments -> the geometry


@dataclass(frozen=True)
class ConvGeometry:
    """Geometry of one ConvLSTM layer for inputs of spatial shape ``in_spatial`` (rank 1-3)."""

    rank: int
    in_spatial: tuple
    kernel_size: tuple
    strides: tuple
    dilation: tuple
    padding: str
    out_spatial: tuple
    pad_before: tuple  # input conv, per spatial dim
    recurrent_pad_before: tuple  # recurrent conv ("same", stride 1)

    @staticmethod
    def build(in_spatial, kernel_size, strides, dilation, padding):
        """The geometry (one object per distinct arguments: a layer's calls ask for the same)."""
        key = (tuple(in_spatial), tuple(kernel_size), tuple(strides), tuple(dilation), padding)
        if torch.compiler.is_compiling():  # no module state written while torch.compile traces
            return ConvGeometry._build(*key)
        geometry = _built.get(key)
        if geometry is None:
            geometry = ConvGeometry._build(*key)
            if len(_built) < 4096:
                _built[key] = geometry
        return geometry

    @staticmethod
    def _build(in_spatial, kernel_size, strides, dilation, padding):
        rank = len(in_spatial)
        out = tuple(
            conv_output_size(n, k, s, d, padding)
            for n, k, s, d in zip(in_spatial, kernel_size, strides, dilation)
        )
        if any(o < 1 for o in out):
            raise ValueError(
                f"input spatial shape {tuple(in_spatial)} is too small for kernel_size "
                f"{tuple(kernel_size)} with dilation_rate {tuple(dilation)} and padding "
                f"{padding!r}: the output would be {out}"
            )
        if padding == "same":
            pads = tuple(
                same_pad_before(n, k, s, d)
                for n, k, s, d in zip(in_spatial, kernel_size, strides, dilation)
            )
        else:
            pads = (0,) * rank
        rpads = tuple(same_pad_before(n, k, 1, 1) for n, k in zip(out, kernel_size))
        return ConvGeometry(
            rank, tuple(in_spatial), tuple(kernel_size), tuple(strides), tuple(dilation),
            padding, out, pads, rpads,
        )

    def padded3d(self, values, fill):
        """Left-pad a per-rank tuple to the kernels' (D, H, W) view."""
        return (fill,) * (3 - self.rank) + tuple(values)
