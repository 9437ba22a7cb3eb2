"""Argument checking for the functional API: clear ValueError/TypeError before any kernel runs."""

from dataclasses import dataclass

import torch

from .activations import check_activation
from .autograd import FORWARD_VARIANT_FLAGS
from .geometry import ConvGeometry, normalize_tuple

BACKENDS = ("auto", "triton", "reference")
FORWARD_VARIANTS = ("auto", *FORWARD_VARIANT_FLAGS)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ConvLSTMArgs:
    """Validated, normalized arguments of one ``conv_lstm`` call."""

    rank: int
    batch: int
    steps: int
    in_channels: int
    filters: int
    geometry: ConvGeometry
    activation: str
    recurrent_activation: str


def check_cuda_graph_option(value, argument="cuda_graph"):
    """``value`` if it is False, True or "auto"; else a TypeError (not a bool or str) or
    ValueError (another string) naming ``argument``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value == "auto":
            return value
        raise ValueError(f"{argument} must be True, False or 'auto', got {value!r}")
    raise TypeError(f"{argument} must be True, False or 'auto', got {type(value).__name__}")


def _check_tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _expect_shape(tensor, expected, name, layout):
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} {layout}, got {tuple(tensor.shape)}"
        )


def _expect_like(tensor, x, name):
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if tensor.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but x has dtype {x.dtype}")


def check_mask_values(mask):
    """A non-bool mask must hold only 0 and 1: the kernels read it as int8 (256 would wrap to
    0, False, where the reference reads True). Reading the values needs them at trace time:
    skipped under torch.compile. The one check of a call's values, so it runs at every call
    (``call_signature``'s cache keeps the rest)."""
    if (mask.dtype != torch.bool and mask.device.type != "meta"
            and not torch.compiler.is_compiling()):
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask must be boolean (or 0/1 valued), got a {mask.dtype} mask "
                             "with other values")


def _tensor_signature(t):
    if t is None:
        return None
    kind = type(t)
    if kind is not torch.Tensor and kind is not torch.nn.Parameter:
        raise TypeError  # not cached: validation names the argument (subclasses: every call)
    return (t.shape, t.dtype, t.device)


def _option_signature(value):
    kind = type(value)  # True == 1 and hash alike: the type tells them apart
    if kind is tuple or kind is list:
        return (kind, *[(type(v), v) for v in value])
    return (kind, value)


def call_signature(x, kernel, recurrent_kernel, bias, initial_state, mask, input_dropout_mask,
                   recurrent_dropout_mask, peephole, options):
    """Everything ``validate_conv_lstm_args`` reads but the mask's values, as a hashable key
    (two calls with equal keys validate alike), or None where there is none (a tensor
    subclass or a non-tensor where a tensor belongs, an unhashable option, an activation that
    is not a name, torch.compile or torch.export tracing: symbolic sizes in a key would be
    compared with the cached keys'): those calls are validated every time. ``options``:
    the other arguments (strides, padding, dilation_rate, activation, recurrent_activation,
    go_backwards, backend, forward_variant, recompute_gates, cuda_graph)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return None
    if type(options[3]) is not str or type(options[4]) is not str:
        return None  # a callable (the reference runs it): a key would keep it, and its owner
    try:
        state = None
        if initial_state is not None:
            kind = type(initial_state)
            if (kind is not tuple and kind is not list) or len(initial_state) != 2:
                return None
            state = (_tensor_signature(initial_state[0]), _tensor_signature(initial_state[1]))
            if state[0] is None or state[1] is None:
                return None
        key = (_tensor_signature(x), _tensor_signature(kernel),
               _tensor_signature(recurrent_kernel), _tensor_signature(bias), state,
               _tensor_signature(mask), _tensor_signature(input_dropout_mask),
               _tensor_signature(recurrent_dropout_mask), _tensor_signature(peephole),
               *[_option_signature(value) for value in options])
        hash(key)
    except TypeError:
        return None
    return key


def validate_conv_lstm_args(x, kernel, recurrent_kernel, bias, initial_state, strides, padding,
                            dilation_rate, activation, recurrent_activation, go_backwards, mask,
                            backend, input_dropout_mask, recurrent_dropout_mask, peephole=None,
                            forward_variant="auto", recompute_gates="auto", cuda_graph=False):
    _check_tensor(x, "x")
    _check_tensor(kernel, "kernel")
    _check_tensor(recurrent_kernel, "recurrent_kernel")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor {FLOAT_DTYPES}, got {x.dtype}")
    rank = kernel.dim() - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            "kernel must have shape (*kernel_size, C_in, 4 * filters) with 1 to 3 kernel dims, "
            f"got {tuple(kernel.shape)}"
        )
    if x.dim() != rank + 3:
        raise ValueError(
            f"x must have shape (batch, time, *spatial, channels) with {rank} spatial dims to "
            f"match a {rank}D kernel, got {tuple(x.shape)}"
        )
    batch, steps = x.shape[:2]
    if batch < 1 or steps < 1:
        raise ValueError(f"x must have at least one sample and one time step, got {tuple(x.shape)}")
    in_channels = x.shape[-1]
    if in_channels < 1:
        raise ValueError(f"x must have at least one channel (channels-last), got {tuple(x.shape)}")
    if backend == "triton" and x.device.type not in ("cuda", "cpu"):
        raise ValueError("backend='triton' needs CUDA tensors (or CPU tensors under "
                         f"TRITON_INTERPRET=1); x is on {x.device}")
    kernel_size = tuple(kernel.shape[:rank])
    if min(kernel_size) < 1:
        raise ValueError(f"kernel must have a kernel size of at least 1 along every spatial dim, "
                         f"got shape {tuple(kernel.shape)}")
    four_f = kernel.shape[-1]
    if four_f % 4 != 0 or four_f == 0 or kernel.shape[-2] != in_channels:
        raise ValueError(
            f"kernel must have shape (*kernel_size, C_in={in_channels}, 4 * filters), "
            f"got {tuple(kernel.shape)}"
        )
    filters = four_f // 4
    _expect_like(kernel, x, "kernel")
    _expect_shape(recurrent_kernel, kernel_size + (filters, four_f), "recurrent_kernel",
                  "(*kernel_size, filters, 4 * filters)")
    _expect_like(recurrent_kernel, x, "recurrent_kernel")
    if bias is not None:
        _check_tensor(bias, "bias")
        _expect_shape(bias, (four_f,), "bias", "(4 * filters,)")
        _expect_like(bias, x, "bias")

    strides = normalize_tuple(strides, rank, "strides")
    dilation = normalize_tuple(dilation_rate, rank, "dilation_rate")
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError(
            "`strides > 1` is not compatible with `dilation_rate > 1`. Received: "
            f"strides={strides} and dilation_rate={dilation}"
        )
    try:
        geometry = ConvGeometry.build(tuple(x.shape[2:-1]), kernel_size, strides, dilation,
                                      padding.lower())
    except ValueError as error:  # name the argument: the spatial dims of x
        raise ValueError(f"x of shape {tuple(x.shape)}: {error}") from None
    state_shape = (batch, *geometry.out_spatial, filters)

    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError("initial_state must be a pair (h0, c0) of tensors")
        for value, name in zip(initial_state, ("initial_state[0] (h0)", "initial_state[1] (c0)")):
            _check_tensor(value, name)
            _expect_shape(value, state_shape, name, "(batch, *out_spatial, filters)")
            if value.device != x.device:
                raise ValueError(f"{name} is on {value.device} but x is on {x.device}")
        if initial_state[0].dtype != x.dtype:
            raise TypeError(f"initial_state[0] (h0) has dtype {initial_state[0].dtype} but x has "
                            f"dtype {x.dtype}")
        if not initial_state[1].dtype.is_floating_point:
            raise TypeError(f"initial_state[1] (c0) must be floating point, got "
                            f"{initial_state[1].dtype}")
    if mask is not None:
        _check_tensor(mask, "mask")
        _expect_shape(mask, (batch, steps), "mask", "(batch, time)")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        if mask.dtype.is_complex:
            raise TypeError(f"mask must be a bool (or 0/1 integer or float) tensor, got "
                            f"{mask.dtype}")
        check_mask_values(mask)
    for value, name, shape in (
        (input_dropout_mask, "input_dropout_mask", (4, batch, *x.shape[2:])),
        (recurrent_dropout_mask, "recurrent_dropout_mask", (4,) + state_shape),
    ):
        if value is not None:
            _check_tensor(value, name)
            _expect_shape(value, shape, name, "(4 gates, batch, *spatial, channels)")
            _expect_like(value, x, name)
    if peephole is not None:
        _check_tensor(peephole, "peephole")
        _expect_shape(peephole, (3, filters), "peephole", "(3, filters): w_ci, w_cf, w_co")
        _expect_like(peephole, x, "peephole")
    if not isinstance(go_backwards, bool):
        raise TypeError(f"go_backwards must be a bool, got {type(go_backwards).__name__}")
    if forward_variant not in FORWARD_VARIANTS:
        raise ValueError(f"forward_variant must be one of {FORWARD_VARIANTS}, got "
                         f"{forward_variant!r}")
    if forward_variant == "unfused" and (mask is not None or peephole is not None):
        raise ValueError("forward_variant='unfused' (the separate-cell-kernel baseline) supports "
                         "neither mask nor peephole; use 'hoisted' or 'fused_input'")
    if not (isinstance(recompute_gates, bool) or recompute_gates == "auto"):
        raise TypeError(f"recompute_gates must be True, False or 'auto', got {recompute_gates!r}")
    check_cuda_graph_option(cuda_graph)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return ConvLSTMArgs(
        rank=rank, batch=batch, steps=steps, in_channels=in_channels, filters=filters,
        geometry=geometry,
        activation=check_activation(activation, "activation"),
        recurrent_activation=check_activation(recurrent_activation, "recurrent_activation"),
    )
