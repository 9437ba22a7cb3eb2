"""Plain-torch ConvLSTM: the oracle every kernel is tested against, and the CPU backend.

Semantics are Keras 3 ``ConvLSTM1D/2D/3D`` (``keras/src/layers/rnn/conv_lstm.py`` plus the torch
backend's ``rnn`` loop), checked against Keras itself in ``tests/test_reference_keras.py``.

Shapes (channels-last, rank r = 1, 2 or 3 spatial dims):
    x                       (B, T, *spatial, C_in)
    kernel                  (*k, C_in, 4F)      gate blocks i, f, c, o along the last axis
    recurrent_kernel        (*k, F, 4F)
    bias                    (4F,)
    h, c, initial_state[i]  (B, *out_spatial, F)
    seq                     (B, T, *out_spatial, F)
    mask                    (B, T)
    input_dropout_mask      (4, B, *spatial, C_in)
    recurrent_dropout_mask  (4, B, *out_spatial, F)

Internally everything runs channels-first so that ``torch.nn.functional.convNd`` applies directly.
The time loop is a Python loop, except under ``torch.export`` (and so ONNX's dynamo exporter),
where it is one ``scan`` so that the exported program keeps T symbolic (``_symbolic_time``).
"""

import torch
import torch.nn.functional as F

from .activations import torch_activation
from .geometry import ConvGeometry, normalize_tuple

try:  # a prototype in torch 2.13: a loop that dynamo, export and ONNX (Scan) keep symbolic
    from torch._higher_order_ops.scan import scan as _scan
except ImportError:  # pragma: no cover - older torch
    _scan = None

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# Permutations with non-negative axes only: ONNX's legacy exporter writes movedim(-1, 1) as a
# Transpose with perm {0, -1, 1, 2}, which ONNX Runtime refuses.
def _to_channels_first(t):
    # (N, *spatial, C) -> (N, C, *spatial)
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1))


def _to_channels_last(t):
    # (N, C, *spatial) -> (N, *spatial, C)
    return t.permute(0, *range(2, t.dim()), 1)


def _time_major_channels_first(x):
    # (B, T, *spatial, C) -> (T * B, C, *spatial), contiguous
    batch, steps, channels = x.shape[0], x.shape[1], x.shape[-1]
    return x.permute(1, 0, x.dim() - 1, *range(2, x.dim() - 1)).reshape(
        steps * batch, channels, *x.shape[2:-1])


def _symbolic_time():
    """Whether the time loop should be one ``scan`` (a graph op over a symbolic T) instead of a
    Python loop: under ``torch.export`` (and so ONNX's dynamo exporter), whose graphs then take
    any T. Elsewhere the Python loop: eager calls (the fastest on a CPU), and ``torch.compile``,
    which on torch 2.13 fails on this scan (inductor lowers it to a while_loop whose carried h
    and c change layout: "Expected carried_inputs and body_output to have same metadata"; and
    it refuses its backward: "scan might be aliasing the input or the output", the carried c
    being also an intermediate saved for backward; with c cloned into the carry, inductor's
    lowering of the scan to a while_loop then fails on a data-dependent scalar, checked
    2026-12-03), so compiled code specializes on T.
    """
    return _scan is not None and torch.compiler.is_exporting()


def _torch_weight(w, rank):
    # Keras (*k, C_in, C_out) -> torch (C_out, C_in, *k)
    return w.permute(rank + 1, rank, *range(rank))


def _pad_pairs(in_spatial, out_spatial, kernel_size, strides, dilation, pad_before):
    """F.pad argument (last dim first) reproducing TF padding, asymmetric for even kernels.

    The input extent the conv reads is ``(out - 1) * s + (k - 1) * d + 1``; whatever of it lies
    beyond the input after ``pad_before`` is padded after. For "valid" this is never positive.
    """
    pairs = []
    for n, o, k, s, d, before in zip(
        in_spatial, out_spatial, kernel_size, strides, dilation, pad_before
    ):
        after = max((o - 1) * s + (k - 1) * d + 1 - n - before, 0)
        pairs.append((before, after))
    flat = []
    for before, after in reversed(pairs):
        flat.extend((before, after))
    return flat


def _conv(t, weight, bias, strides, dilation, pads, rank):
    """Channels-first conv with explicit (possibly asymmetric) zero padding: the conv's own
    padding where it is symmetric (no padded copy of the input, on every step)."""
    before, after = pads[0::2], pads[1::2]
    if before == after:
        return _CONV[rank](t, weight, bias, stride=strides, dilation=dilation,
                           padding=tuple(reversed(before)))
    return _CONV[rank](F.pad(t, pads), weight, bias, stride=strides, dilation=dilation)


def conv_lstm_reference(
    x,
    kernel,
    recurrent_kernel,
    bias=None,
    initial_state=None,
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    activation="tanh",
    recurrent_activation="sigmoid",
    go_backwards=False,
    mask=None,
    input_dropout_mask=None,
    recurrent_dropout_mask=None,
    peephole=None,
):
    """Run a ConvLSTM over a whole sequence; returns ``(seq, h, c)``.

    Args:
        x: (B, T, *spatial, C_in), channels-last; rank = x.dim() - 3 in {1, 2, 3}.
        kernel: (*k, C_in, 4F). recurrent_kernel: (*k, F, 4F). bias: (4F,) or None.
        initial_state: None (zeros) or (h0, c0), each (B, *out_spatial, F).
        strides, dilation_rate: int or tuple of rank ints (input conv only).
        padding: "valid" or "same" (TF-style; input conv only). The recurrent conv is always
            stride 1, "same", no dilation.
        activation, recurrent_activation: names from ``activations.TORCH_ACTIVATIONS``.
        go_backwards: process time reversed; ``seq`` is returned in processing (reversed) order.
        mask: (B, T) bool or 0/1, in *input* time order (Keras flips it together with x).
            At a masked step h and c carry over and the output repeats the previous output,
            which is zeros before the first unmasked step (even if the initial state is not).
        input_dropout_mask: (4, B, *spatial, C_in), already scaled; gate g's input conv sees
            ``x_t * input_dropout_mask[g]`` at every step.
        recurrent_dropout_mask: (4, B, *out_spatial, F), already scaled; gate g's recurrent conv
            sees ``h_prev * recurrent_dropout_mask[g]``.
        peephole: None or (3, F) per-channel peephole weights (w_ci, w_cf, w_co), an extension
            beyond Keras (Shi et al. 2015): i and f see ``+ w_ci * c_prev``, ``+ w_cf * c_prev``,
            o sees ``+ w_co * c``.

    Returns:
        seq: (B, T, *out_spatial, F); h, c: (B, *out_spatial, F) final states.
    """
    rank = x.dim() - 3
    batch, steps = x.shape[0], x.shape[1]
    in_spatial = tuple(x.shape[2:-1])
    kernel_size = tuple(kernel.shape[:rank])
    filters = recurrent_kernel.shape[-2]
    strides = normalize_tuple(strides, rank, "strides")
    dilation = normalize_tuple(dilation_rate, rank, "dilation_rate")
    geom = ConvGeometry.build(in_spatial, kernel_size, strides, dilation, padding)
    out_spatial = geom.out_spatial
    act = torch_activation(activation)
    ract = torch_activation(recurrent_activation)

    in_pads = _pad_pairs(in_spatial, out_spatial, kernel_size, strides, dilation, geom.pad_before)
    rec_pads = _pad_pairs(
        out_spatial, out_spatial, kernel_size, (1,) * rank, (1,) * rank, geom.recurrent_pad_before
    )
    w = _torch_weight(kernel, rank)  # (4F, C_in, *k)
    r = _torch_weight(recurrent_kernel, rank)  # (4F, F, *k)

    # The frames time-major and channels-first, contiguous (one copy of x, C_in channels): the
    # input conv's output is then channels-first and contiguous per step, so the per-step
    # pointwise ops run on contiguous memory (on a channels-last conv output they took the
    # CPU's strided path, several times slower) and backward makes no layout-converting copies.
    frames = _time_major_channels_first(x)
    xg = None
    if input_dropout_mask is None and not _symbolic_time():
        # Eager: the input conv of each step inside the loop, as Keras' cell computes it: on a
        # CPU faster than one conv of all T*B frames first, whose (T, B, 4F, ...) output
        # leaves the cache before the steps read it
        frame_steps = frames.reshape(steps, batch, *frames.shape[1:]).unbind(0)
    elif input_dropout_mask is None:
        # under export (a scan over T): the input projection of all frames at once
        xg = _conv(frames, w, bias, strides, dilation, in_pads, rank)
    else:
        # Each gate sees its own dropped-out copy of the input, so one conv per gate; the
        # same per-frame mask applies at every time step.
        gate_outs = []
        for g in range(4):
            xm = x * input_dropout_mask[g].unsqueeze(1)  # broadcast over T
            xm = _time_major_channels_first(xm)
            sl = slice(g * filters, (g + 1) * filters)
            b = None if bias is None else bias[sl]
            gate_outs.append(_conv(xm, w[sl], b, strides, dilation, in_pads, rank))
        xg = torch.cat(gate_outs, dim=1)
    if xg is not None:
        xg = xg.reshape(steps, batch, 4 * filters, *out_spatial)  # time-major

    state_shape = (batch, filters, *out_spatial)
    if initial_state is None:
        h = x.new_zeros(state_shape)
        c = x.new_zeros(state_shape)
    else:
        h = _to_channels_first(initial_state[0])
        # c0 may come in another float dtype (the kernels keep c in fp32 whatever it is); the
        # reference computes in x's dtype throughout
        c = _to_channels_first(initial_state[1]).to(x.dtype)
    if recurrent_dropout_mask is not None:
        # (4, B, *out_spatial, F) -> (4, B, F, *out_spatial), matching h's internal layout.
        d = recurrent_dropout_mask.dim()
        # (copies: scan refuses closed-over tensors that alias one another; r is a permuted
        # view of the recurrent kernel, its chunks share its memory)
        rmask = recurrent_dropout_mask.permute(0, 1, d - 1, *range(2, d - 1)).contiguous()
        # (F, F, *k) each, gate order i, f, c, o
        r_gates = [g.contiguous() for g in r.chunk(4, dim=0)]
    if mask is not None:
        # (B, T) -> (B, T, 1, ...) broadcastable against (B, F, *out_spatial) per step.
        mask = mask.to(torch.bool).reshape(batch, steps, *(1,) * (rank + 1))

    if peephole is not None:
        # (3, F) -> three (1, F, 1, ...) per-channel weights against (B, F, *out_spatial)
        # (clones: scan refuses closed-over tensors that alias one another; a few numbers)
        w_ci, w_cf, w_co = (w.clone() for w in peephole.reshape(3, 1, filters, *(1,) * rank))

    ones = (1,) * rank

    def cell(h, c, xg_t):
        """One step from the state and the step's input projection: (h_new, c_new)."""
        if recurrent_dropout_mask is None:
            hg = _conv(h, r, None, ones, ones, rec_pads, rank)
        else:
            # Each gate sees its own dropped-out copy of h, so one conv per gate.
            hg = torch.cat(
                [
                    _conv(h * rmask[g], r_gates[g], None, ones, ones, rec_pads, rank)
                    for g in range(4)
                ],
                dim=1,
            )
        zi, zf, zc, zo = (xg_t + hg).chunk(4, dim=1)
        if peephole is not None:
            zi = zi + w_ci * c
            zf = zf + w_cf * c
        i = ract(zi)
        f = ract(zf)
        c_new = f * c + i * act(zc)
        if peephole is not None:
            zo = zo + w_co * c_new
        o = ract(zo)
        return o * act(c_new), c_new

    # Keras' rnn loop with a mask: masked steps keep the state and repeat the previous *output*;
    # the output before any unmasked step is zeros, not the initial h.
    if _symbolic_time():
        seq_cf, h, c = _scan_time(cell, xg, h, c, mask, go_backwards)
    else:
        if mask is not None:
            prev_out = x.new_zeros(state_shape)
        outputs = []
        # one view per step: indexing xg[t] in the loop would make its backward zero-fill
        # and add a whole xg-sized gradient per step (T^2 work); unbind's backward is one stack
        xg_steps = xg.unbind(0) if xg is not None else None
        mask_steps = None if mask is None else mask.unbind(1)
        order = range(steps - 1, -1, -1) if go_backwards else range(steps)
        for t in order:
            xg_t = (xg_steps[t] if xg_steps is not None else
                    _conv(frame_steps[t], w, bias, strides, dilation, in_pads, rank))
            h_new, c_new = cell(h, c, xg_t)
            if mask is None:
                h, c = h_new, c_new
                outputs.append(h_new)
            else:
                m = mask_steps[t]
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                prev_out = torch.where(m, h_new, prev_out)
                outputs.append(prev_out)
        seq_cf = torch.stack(outputs, dim=1)  # (B, T, F, *out_spatial)

    seq = _to_channels_last(seq_cf.flatten(0, 1))
    seq = seq.reshape(batch, steps, *out_spatial, filters)
    return seq, _to_channels_last(h), _to_channels_last(c)


def _scan_time(cell, xg, h, c, mask, go_backwards):
    """The time loop as one ``scan`` over a T that stays symbolic; returns (seq (B, T, F, ...),
    h, c), ``seq`` in processing order as the Python loop gives it."""
    xs = [xg]  # (T, B, 4F, *out_spatial)
    if mask is not None:
        xs.append(mask.transpose(0, 1))  # (T, B, 1, ...)
    if go_backwards:
        xs = [t.flip(0) for t in xs]
    # scan wants the carry's layout to be what a step returns (h0, c0 come as permuted views)
    h, c = h.contiguous(), c.contiguous()

    if mask is None:

        def step(carry, xs_t):
            h_new, c_new = cell(carry[0], carry[1], xs_t[0])
            return [h_new, c_new], h_new.clone()  # scan refuses an output aliasing the carry

        init = [h, c]
    else:

        def step(carry, xs_t):
            h, c, prev_out = carry
            m = xs_t[1]
            h_new, c_new = cell(h, c, xs_t[0])
            out = torch.where(m, h_new, prev_out)
            return [torch.where(m, h_new, h), torch.where(m, c_new, c), out], out.clone()

        init = [h, c, torch.zeros_like(h)]
    carry, seq = _scan(step, init, xs)
    return seq.transpose(0, 1), carry[0], carry[1]
