"""Tune ahead of time: run whole forward (and backward) passes of given problems once, so that
every kernel launch on the way picks its config (``convlstm_triton.tuning``: measured on a GPU
and cached on disk) before a timed or captured run needs it.

This drives ``conv_lstm`` itself, so it sits above ``functional`` (``tuning``, the config cache
that the launchers ask, sits below it). ``convlstm_triton.tune`` is this module's ``tune``.
"""

import math
from collections.abc import Callable, Iterable

import torch

from . import tuning
from .functional import conv_lstm

__all__ = ["tune"]


def tune(shapes: Iterable, dtypes: Iterable[str] = ("fp32", "bf16"),
         modes: Iterable[str] = ("fwd", "train"), *, forward_variants: Iterable[str] = ("auto",),
         device="cuda", progress: Callable[[int, int, str], None] | None = None) -> list:
    """Tune ahead of time every kernel that ``conv_lstm(..., backend="triton")`` launches for
    these problems, by running its forward (``"fwd"``, under ``no_grad``) and forward +
    backward of a mean-square loss (``"train"``) once per (shape, dtype, mode, variant).

    Args:
        shapes: each a tuple ``(B, T, *spatial, C_in, F, k)`` with 1 to 3 spatial dims (k an int
            or a tuple), a dict with keys ``B``/``batch``, ``T``/``steps``, ``spatial``,
            ``C_in``/``in_channels``, ``F``/``filters``, ``k``/``kernel`` (optional ``name``), or
            an object with those attribute names (``bench_convlstm.Shape``). "same" padding,
            stride 1, with bias; masks, dropout and peepholes are other keys, tuned on first use.
        dtypes: names among ``fp32``, ``bf16``, ``fp16``.
        modes: among ``fwd``, ``train``.
        forward_variants: ``conv_lstm``'s ``forward_variant`` values to run (each launches
            other kernels or flags, so other keys): e.g. ``("hoisted", "fused_input")`` to tune
            both before ``"auto"`` chooses between them.
        device: a CUDA device. A CPU device is accepted only under ``TRITON_INTERPRET=1``,
            where nothing is benchmarked (a dry run of the same code path).
        progress: called as ``progress(done, total, label)`` before each run and at the end.

    Returns:
        The tuning events (see ``tuning_log()``) that these runs produced: configs measured
        now (``source == "tuned"``), found in the disk cache (``"disk"``) or defaulted.
    """
    dev = tuning._as_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("convlstm_triton.tune: tuning needs a CUDA GPU "
                               "(torch.cuda.is_available() is False)")
    elif not tuning._interpreter_enabled():
        raise RuntimeError(f"convlstm_triton.tune: tuning needs a CUDA GPU; got device "
                           f"{dev} (a CPU dry run needs TRITON_INTERPRET=1)")
    problems = [_normalize_shape(s) for s in shapes]
    dtypes, modes = list(dtypes), list(modes)
    for name in dtypes:
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(_DTYPES)}")
    for mode in modes:
        if mode not in ("fwd", "train"):
            raise ValueError(f"unknown mode {mode!r}; choose from fwd, train")
    runs = [(p, d, m, v) for p in problems for d in dtypes for m in modes
            for v in forward_variants]
    # every run through pick_config (and into the log), none replayed from a launch plan
    tuning._new_generation()
    start = len(tuning._log)
    for i, (shape, dtype_name, mode, variant) in enumerate(runs):
        if progress is not None:
            label = f"{shape['name']} {dtype_name} {mode}"
            progress(i, len(runs), label if variant == "auto" else f"{label} {variant}")
        _run_problem(conv_lstm, shape, _DTYPES[dtype_name], mode, variant, dev)
    if progress is not None:
        progress(len(runs), len(runs), "done")
    return [dict(e) for e in tuning._log[start:]]


# ---------------------------------------------------------------------------------------------
# the problems tune() runs


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _normalize_shape(shape):
    """-> dict(name, batch, steps, spatial, in_channels, filters, kernel_size)."""
    aliases = {"batch": "B", "steps": "T", "in_channels": "C_in", "filters": "F", "kernel": "k"}
    if isinstance(shape, (tuple, list)):
        if not 5 <= len(shape) - 1 <= 7:
            raise ValueError(f"shape {shape!r}: expected (B, T, *spatial, C_in, F, k) with 1 to 3 "
                             "spatial dims")
        b, t, *spatial, c_in, f, k = shape
        fields = dict(batch=b, steps=t, spatial=tuple(spatial), in_channels=c_in, filters=f,
                      kernel=k, name=None)
    else:
        get = shape.get if isinstance(shape, dict) else (lambda n, d=None: getattr(shape, n, d))
        fields = {}
        for long, short in aliases.items():
            value = get(long, get(short, None))
            if value is None:
                raise ValueError(f"shape {shape!r}: missing {long!r} (or {short!r})")
            fields[long] = value
        fields["spatial"] = tuple(get("spatial", ()))
        fields["name"] = get("name", None)
    spatial = tuple(int(s) for s in fields["spatial"])
    if not 1 <= len(spatial) <= 3:
        raise ValueError(f"shape {shape!r}: 1 to 3 spatial dims, got {len(spatial)}")
    k = fields["kernel"]
    kernel_size = tuple(int(v) for v in k) if isinstance(k, (tuple, list)) else (int(k),) * len(
        spatial)
    name = fields["name"] or "x".join(map(str, (fields["batch"], fields["steps"], *spatial,
                                                fields["in_channels"], fields["filters"],
                                                *kernel_size)))
    return dict(name=name, batch=int(fields["batch"]), steps=int(fields["steps"]),
                spatial=spatial, in_channels=int(fields["in_channels"]),
                filters=int(fields["filters"]), kernel_size=kernel_size)


def _run_problem(conv_lstm, shape, dtype, mode, variant, device):
    """One forward (or forward + backward) of conv_lstm on random inputs of this shape: every
    launch on the way asks pick_config and so gets tuned."""
    b, t, spatial = shape["batch"], shape["steps"], shape["spatial"]
    c_in, f, ks = shape["in_channels"], shape["filters"], shape["kernel_size"]
    scale = 1.0 / math.sqrt(math.prod(ks) * (c_in + f))

    def rand(*size, s=1.0):
        return (torch.randn(*size, device=device) * s).to(dtype)

    x = rand(b, t, *spatial, c_in)
    kernel = rand(*ks, c_in, 4 * f, s=scale)
    recurrent = rand(*ks, f, 4 * f, s=scale)
    bias = torch.zeros(4 * f, device=device, dtype=dtype)
    options = dict(padding="same", backend="triton")
    if variant != "auto":
        options["forward_variant"] = variant
    if mode == "fwd":
        with torch.no_grad():
            conv_lstm(x, kernel, recurrent, bias, **options)
    else:
        leaves = [v.requires_grad_() for v in (x, kernel, recurrent, bias)]
        seq = conv_lstm(*leaves, **options)[0]
        seq.float().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del x, kernel, recurrent, bias
    if device.type == "cuda":
        torch.cuda.empty_cache()
