"""``ConvLSTM1D/2D/3D``: torch.nn.Modules with Keras 3's arguments, weights and semantics.

Argument names and order are those of ``keras.layers.ConvLSTM2D`` (Keras 3), followed by the
keyword-only PyTorch arguments ``in_channels``, ``backend``, ``cuda_graph``, ``device`` and
``dtype``. The
parameters ``kernel`` ``(*kernel_size, C_in, 4F)``, ``recurrent_kernel`` ``(*kernel_size, F, 4F)``
and ``bias`` ``(4F,)`` have the Keras shapes and gate order (i, f, c, o), so
``layer.set_keras_weights(keras_layer.get_weights())`` reproduces a Keras layer exactly.

* **Lazy input channels.** ``in_channels=None`` (the default, as in Keras where the weights are
  built at the first call) makes the parameters ``UninitializedParameter``s
  (``torch.nn.modules.lazy.LazyModuleMixin``); they are materialized and initialized at the first
  forward (from x's channel dim), by ``set_keras_weights`` or by ``load_state_dict``. Create the
  optimizer after that, as for torch's own lazy modules. A first call that fails (bad input,
  mask, state...) leaves the layer lazy; first calls from several threads at once initialize it
  once (the others wait for it, then run on its weights).
* **Dropout.** In training mode with ``0 < rate < 1``, four per-gate inverted-dropout masks for
  the input (one frame's shape) and four for the state are drawn once per call and reused at every
  time step (Keras). With ``seed`` the masks come from the layer's own counter-based stream
  (``convlstm_triton.seeded_random``: a hash of the seed, the call number and the element; the
  same on every device and in every process, advancing with every training call, compiling
  with ``torch.compile(fullgraph=True)``); without, from torch's global RNG. No dropout in eval
  mode.
* **stateful=True.** The final ``(h, c)`` of a call (detached) is the initial state of the next
  call, kept as non-persistent buffers (they follow ``.to()`` but are not in the state_dict).
  ``reset_states()`` forgets them; after that the next call may use a new batch size. An explicit
  ``initial_state`` overrides the kept state for that call (as in Keras).
* **Regularizers** (``kernel_regularizer``, ``recurrent_regularizer``, ``bias_regularizer``,
  ``activity_regularizer``): Keras names (``"l1"``, ``"l2"``, ``"l1_l2"``), Keras dicts or callables
  (``convlstm_triton.keras.regularizers``). torch has no ``layer.losses``: add
  ``layer.regularization_loss()`` to your loss. It is the weight penalties on the current
  parameters plus the activity penalty of the **last forward call** (Keras: the regularizer of each
  returned tensor -- the output, and ``h``, ``c`` with ``return_state`` -- divided by the batch
  size), kept with its autograd graph until the next call.
* **Constraints** (``kernel_constraint``, ``recurrent_constraint``, ``bias_constraint``): Keras
  names (``"max_norm"``, ``"non_neg"``, ``"unit_norm"``, ``"min_max_norm"``), Keras dicts or
  callables (``convlstm_triton.keras.constraints``; norms over ``axis`` of the Keras-layout weight).
  Keras applies them after every optimizer update: call ``layer.apply_constraints()`` after
  ``optimizer.step()``.
* **cuda_graph** (False, True, "auto"): ``conv_lstm``'s option: replay the Triton path's time
  loop from CUDA graphs captured at a problem's first call (``convlstm_triton.cuda_graphs``).
"""

import inspect
import math
import threading

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter, is_lazy

from .. import seeded_random
from ..activations import CHANNEL_WISE_ACTIVATIONS, check_activation
from ..functional import conv_lstm
from ..geometry import ConvGeometry, move_from_last, move_to_last, normalize_tuple
from ..validation import check_cuda_graph_option
from . import constraints, initializers, regularizers

__all__ = ["ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"]

_BACKENDS = ("auto", "triton", "reference")


def _check_rate(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(f"{argument} must be in [0, 1), got {value!r}")
    return float(value)


def _check_positive_int(value, argument, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


# Held while a lazy layer initializes and runs its first call (one lock for all layers, not one
# per layer: a lock would make the module unpicklable and uncopyable). Reentrant: a first call
# that reaches another layer's first call (a callable activation...) does not deadlock.
_LAZY_INIT_LOCK = threading.RLock()


class _ConvLSTM(LazyModuleMixin, nn.Module):
    """Shared implementation of ``ConvLSTM1D/2D/3D`` (``rank`` spatial dims)."""

    def __init__(
        self,
        rank,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        *,
        in_channels=None,
        backend="auto",
        cuda_graph=False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.rank = rank
        self.filters = _check_positive_int(filters, "filters")
        self.kernel_size = normalize_tuple(kernel_size, rank, "kernel_size")
        self.strides = normalize_tuple(strides, rank, "strides")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same' (any case), got {padding!r}")
        self.padding = padding.lower()
        if data_format is None:
            data_format = "channels_last"
        if not isinstance(data_format, str) or data_format.lower() not in (
            "channels_last", "channels_first",
        ):
            raise ValueError(
                f"data_format must be None, 'channels_last' or 'channels_first', "
                f"got {data_format!r}"
            )
        self.data_format = data_format.lower()
        self.dilation_rate = normalize_tuple(dilation_rate, rank, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` is not compatible with `dilation_rate > 1`. Received: "
                f"strides={self.strides} and dilation_rate={self.dilation_rate}"
            )
        # Keras: activation=None means no activation.
        self.activation = check_activation(
            "linear" if activation is None else activation, "activation"
        )
        self.recurrent_activation = check_activation(
            "linear" if recurrent_activation is None else recurrent_activation,
            "recurrent_activation",
        )
        for argument in ("activation", "recurrent_activation"):
            name = getattr(self, argument)
            if self.data_format == "channels_first" and name in CHANNEL_WISE_ACTIVATIONS:
                # Keras applies it over the last axis of its gate tensors: W, not the channels
                raise ValueError(
                    f"{argument}={name!r} with data_format='channels_first' is not supported: "
                    "Keras reduces it over the last spatial axis there; use channels_last"
                )
        self.use_bias = bool(use_bias)
        # Resolve now so that a bad name fails at construction, not at the first forward.
        initializers.get(kernel_initializer, "kernel_initializer")
        initializers.get(recurrent_initializer, "recurrent_initializer")
        initializers.get(bias_initializer, "bias_initializer")
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.unit_forget_bias = bool(unit_forget_bias)
        # Resolved objects (Keras keeps them as layer attributes too); see regularization_loss()
        # and apply_constraints().
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.recurrent_regularizer = regularizers.get(
            recurrent_regularizer, "recurrent_regularizer"
        )
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer")
        self.activity_regularizer = regularizers.get(activity_regularizer, "activity_regularizer")
        weight_rank = len(self.kernel_size) + 2
        for argument, value, ndim in (
            ("kernel_constraint", kernel_constraint, weight_rank),
            ("recurrent_constraint", recurrent_constraint, weight_rank),
            ("bias_constraint", bias_constraint, 1),
        ):
            constraint = constraints.get(value, argument)
            if isinstance(constraint, constraints.Constraint):
                try:
                    constraint.check_rank(ndim)
                except ValueError as e:
                    raise ValueError(f"{argument}={constraint!r}: {e}") from None
            setattr(self, argument, constraint)
        self._activity_penalty = None  # the last forward's activity penalty (with its graph)
        self.dropout = _check_rate(dropout, "dropout")
        self.recurrent_dropout = _check_rate(recurrent_dropout, "recurrent_dropout")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
        ):
            raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
        self.seed = None if seed is None else int(seed)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        in_channels = _check_positive_int(in_channels, "in_channels", allow_none=True)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend = backend
        self.cuda_graph = check_cuda_graph_option(cuda_graph)
        # training calls that drew seeded dropout masks: the counter of the seeded stream (a
        # buffer, so that torch.compile sees an in-place update rather than a new constant)
        self.register_buffer("_dropout_draws", torch.zeros((), dtype=torch.int64, device=device),
                             persistent=False)

        factory = {"device": device, "dtype": dtype}
        f4 = 4 * self.filters
        if in_channels is None:
            self.kernel = UninitializedParameter(**factory)
            self.recurrent_kernel = UninitializedParameter(**factory)
            if self.use_bias:
                self.bias = UninitializedParameter(**factory)
        else:
            self.kernel = nn.Parameter(
                torch.empty(self.kernel_size + (in_channels, f4), **factory)
            )
            self.recurrent_kernel = nn.Parameter(
                torch.empty(self.kernel_size + (self.filters, f4), **factory)
            )
            if self.use_bias:
                self.bias = nn.Parameter(torch.empty(f4, **factory))
        if not self.use_bias:
            self.register_parameter("bias", None)
        if in_channels is not None:
            self.reset_parameters()
        # LazyModuleMixin's pre-hook initializes before forward, so a call that then fails
        # leaves the layer built for its bad input, and two threads' first calls both
        # initialize. Ours leaves that to forward (_initializing_forward).
        self._initialize_hook.remove()
        self._initialize_hook = self.register_forward_pre_hook(self._lazy_call_hook,
                                                               with_kwargs=True)
        # stateful: the last (h, c), channels-last, detached; not part of the state_dict.
        self.register_buffer("_state_h", None, persistent=False)
        self.register_buffer("_state_c", None, persistent=False)

    # ------------------------------------------------------------------ parameters

    @property
    def in_channels(self):
        """Input channels, or None while the parameters are not initialized (lazy)."""
        return None if is_lazy(self.kernel) else int(self.kernel.shape[-2])

    def _weight_shapes(self, in_channels):
        f4 = 4 * self.filters
        shapes = {
            "kernel": self.kernel_size + (in_channels, f4),
            "recurrent_kernel": self.kernel_size + (self.filters, f4),
        }
        if self.use_bias:
            shapes["bias"] = (f4,)
        return shapes

    def _materialize(self, in_channels):
        with torch.no_grad():
            for name, shape in self._weight_shapes(in_channels).items():
                param = getattr(self, name)
                if is_lazy(param):
                    param.materialize(shape)

    def reset_parameters(self, generator=None):
        """(Re)initialize the parameters with the layer's initializers (Keras' build order).

        ``generator``: a CPU ``torch.Generator`` for the draws; default torch's global RNG.
        """
        if self.has_uninitialized_params():
            return  # initialized at the first forward / set_keras_weights / load_state_dict
        with torch.no_grad():
            initializers.initialize_(
                self.kernel, self.kernel_initializer, generator=generator,
                argument="kernel_initializer",
            )
            initializers.initialize_(
                self.recurrent_kernel, self.recurrent_initializer, generator=generator,
                argument="recurrent_initializer",
            )
            if self.bias is not None:
                f = self.filters
                kw = {"dtype": self.bias.dtype, "device": self.bias.device,
                      "generator": generator, "argument": "bias_initializer"}
                if self.unit_forget_bias:
                    # Keras: concat(init(F), ones(F), init(2F)) -- the forget slice is *set* to 1.
                    value = torch.cat([
                        initializers.initialize(self.bias_initializer, (f,), **kw),
                        torch.ones(f, dtype=self.bias.dtype, device=self.bias.device),
                        initializers.initialize(self.bias_initializer, (2 * f,), **kw),
                    ])
                else:
                    value = initializers.initialize(self.bias_initializer, (4 * f,), **kw)
                self.bias.copy_(value)

    def initialize_parameters(self, x, *args, **kwargs):
        """LazyModuleMixin hook: materialize and initialize from the first input's channels.
        ``x`` is checked first: an input that the call would refuse leaves the layer lazy (a
        first call with 0 channels used to build it for 0 channels, for good)."""
        with _LAZY_INIT_LOCK:
            if self.has_uninitialized_params():
                self._check_input_rank(x)
                channels = int(x.shape[self._channel_axis])
                if channels < 1:
                    raise ValueError(
                        f"{self._get_name()}: x has {channels} channels (shape "
                        f"{tuple(x.shape)}, {self.data_format}); a layer needs at least one "
                        "input channel")
                self._materialize(channels)
                self.reset_parameters()

    def _unmaterialize(self, names):
        """Make parameters ``names`` lazy again (undo a failed first call's initialization)."""
        for name in names:
            param = getattr(self, name)
            setattr(self, name, UninitializedParameter(
                requires_grad=param.requires_grad, device=param.device, dtype=param.dtype))

    def _drop_lazy_hooks(self):
        # Initialized: an ordinary module from now on, no pre-hook at every call. pop: two
        # threads may both get here (torch's LazyModuleMixin raised AttributeError then).
        for name in ("_initialize_hook", "_load_hook"):
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                handle.remove()

    def _lazy_call_hook(self, module, args, kwargs):
        """The forward pre-hook of a layer not yet called: a lazy layer initializes in forward;
        one initialized otherwise (set_keras_weights, load_state_dict) drops the hooks."""
        if not self.has_uninitialized_params():
            with _LAZY_INIT_LOCK:
                self._drop_lazy_hooks()

    def _infer_parameters(self, module, args, kwargs=None):
        """LazyModuleMixin's initialization as torch.compile calls it, before tracing the first
        call of a lazy layer (eager calls initialize in forward)."""
        with _LAZY_INIT_LOCK:
            if self.has_uninitialized_params():
                self.initialize_parameters(*args, **(kwargs or {}))
            self._drop_lazy_hooks()

    def _initializing_forward(self, x, initial_state, mask):
        """The first call of a lazy layer: initialize the parameters from x's channels and run
        the call; if it raises, the parameters are lazy again (a bad first input must not fix
        the layer's channels). Under the lock from start to end: concurrent first calls
        initialize once, the others wait and then run on the initialized weights."""
        with _LAZY_INIT_LOCK:
            if self.has_uninitialized_params():
                lazy = [name for name in self._weight_shapes(0) if is_lazy(getattr(self, name))]
                try:
                    self.initialize_parameters(x)
                    result = self._forward(x, initial_state, mask)
                except BaseException:
                    self._unmaterialize(lazy)
                    raise
                self._drop_lazy_hooks()
                return result
        return self._forward(x, initial_state, mask)

    def set_keras_weights(self, weights):
        """Load ``[kernel, recurrent_kernel, bias]`` as a Keras layer's ``get_weights()`` has them.

        Numpy arrays or tensors; the bias is omitted when ``use_bias=False``. Initializes a lazy
        layer (C_in is taken from the kernel). Shapes are validated; values are cast to the
        parameters' dtype and device.
        """
        names = ["kernel", "recurrent_kernel"] + (["bias"] if self.use_bias else [])
        if isinstance(weights, (torch.Tensor, np.ndarray)) or not hasattr(weights, "__len__"):
            raise TypeError(
                f"weights must be a list {names} (Keras get_weights()), got "
                f"{type(weights).__name__}"
            )
        if len(weights) != len(names):
            raise ValueError(
                f"expected {len(names)} weights {names} (use_bias={self.use_bias}), "
                f"got {len(weights)}"
            )
        values = [
            w if isinstance(w, torch.Tensor) else torch.from_numpy(np.array(w)) for w in weights
        ]
        kernel = values[0]
        # the gate axis holds 4 * filters: name both, the user passed filters
        gates = f" (last axis: 4 gates x filters={self.filters} = {4 * self.filters})"
        if kernel.dim() != self.rank + 2:
            raise ValueError(
                f"kernel must have shape {self.kernel_size + ('C_in', 4 * self.filters)}"
                f"{gates}, got {tuple(kernel.shape)}"
            )
        in_channels = self.in_channels
        if in_channels is None:
            in_channels = int(kernel.shape[-2])
        expected = self._weight_shapes(in_channels)
        for name, w in zip(names, values):
            if tuple(w.shape) != expected[name]:
                raise ValueError(
                    f"{name} must have shape {expected[name]}{gates}, got {tuple(w.shape)}"
                )
        self._materialize(in_channels)
        with torch.no_grad():
            for name, w in zip(names, values):
                getattr(self, name).copy_(w)

    def get_keras_weights(self):
        """``[kernel, recurrent_kernel, bias]`` as numpy arrays (Keras ``get_weights()`` order).

        bfloat16 parameters are returned as float32 (numpy has no bfloat16).
        """
        if self.has_uninitialized_params():
            raise RuntimeError(
                f"{self._get_name()} has uninitialized (lazy) parameters: call it once, or "
                "pass in_channels=..., or set_keras_weights(...) first"
            )
        out = []
        for p in (self.kernel, self.recurrent_kernel, self.bias):
            if p is None:
                continue
            t = p.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            out.append(t.numpy().copy())
        return out

    def load_keras_weights(self, path, layer_name):
        """Load the weights of Keras layer ``layer_name`` from a saved Keras file.

        ``path``: a ``.keras`` file, a ``.weights.h5`` file or a legacy Keras ``.h5`` file; read
        with h5py (Keras is not needed). See ``convlstm_triton.keras.files``. Where the file
        holds the layer's config (``.keras``, legacy ``.h5`` models), it is compared with this
        layer's arguments first: a ValueError lists every argument that differs (the
        initializers and ``seed`` are not compared: the loaded weights replace what they draw).
        Then as ``set_keras_weights`` (initializes a lazy layer, validates shapes). Returns
        ``self``. ``from_keras`` builds the layer from the file's config instead.
        """
        from .files import load_keras_layer_config, load_keras_layer_weights

        found = load_keras_layer_config(path, layer_name)
        if found is not None:
            differences = self._keras_config_differences(*found)
            if differences:
                raise ValueError(
                    f"layer {layer_name!r} of {str(path)!r} was saved with other arguments than "
                    f"this {type(self).__name__}'s (file vs layer): "
                    + "; ".join(f"{name}: file {a!r}, layer {b!r}" for name, a, b in differences)
                    + f". Build it with {type(self).__name__}.from_keras(path, {layer_name!r}) "
                    "or with these arguments"
                )
        self.set_keras_weights(load_keras_layer_weights(path, layer_name))
        return self

    @classmethod
    def from_keras(cls, path, layer_name, **overrides):
        """The Keras layer ``layer_name`` of a saved Keras file as a new layer of this class:
        built from the file's config (every Keras argument: filters, kernel_size, strides,
        padding, activations, initializers, regularizers, constraints, dropout rates,
        return_sequences...), with its weights loaded. ``overrides``: constructor arguments to
        set or replace (``backend``, ``cuda_graph``, ``device``, ``dtype``, ...).

        The file must hold the model's config: a ``.keras`` file or a legacy ``.h5`` model (a
        ``.weights.h5`` file has none: build the layer and call ``load_keras_weights``). A
        ValueError names a layer of another class, and Keras arguments this layer does not
        support (``zero_output_for_mask=True``, keys of a newer Keras). Keras' dtype policy is
        not applied: the parameters take ``dtype`` (default: torch's default dtype)."""
        from .files import load_keras_layer_config, load_keras_layer_weights

        found = load_keras_layer_config(path, layer_name)
        if found is None:
            raise ValueError(
                f"{str(path)!r} holds no model config for layer {layer_name!r} (a .weights.h5 "
                f"file holds none): build the layer with its arguments and call "
                f"load_keras_weights(path, {layer_name!r})"
            )
        class_name, config = found
        if class_name != cls.__name__:
            raise ValueError(f"layer {layer_name!r} of {str(path)!r} is a {class_name}, not a "
                             f"{cls.__name__}")
        kwargs = keras_config_arguments(config)
        kwargs.update(overrides)
        layer = cls(**kwargs)
        layer.set_keras_weights(load_keras_layer_weights(path, layer_name))
        return layer

    def _keras_config_differences(self, class_name, config):
        """[(argument, file's value, this layer's)] of a Keras layer config."""
        if class_name != type(self).__name__:
            return [("class", class_name, type(self).__name__)]
        file_layer = type(self)(**keras_config_arguments(config))
        differences = []
        for name in KERAS_COMPARED_ARGUMENTS:
            a, b = _comparable(getattr(file_layer, name)), _comparable(getattr(self, name))
            if a is not _INCOMPARABLE and b is not _INCOMPARABLE and a != b:
                differences.append((name, getattr(file_layer, name), getattr(self, name)))
        return differences

    # ------------------------------------------------------------------ forward

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 2

    def _check_input_rank(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.rank + 3:
            layout = (
                "(B, T, *spatial, C)" if self.data_format == "channels_last"
                else "(B, T, C, *spatial)"
            )
            raise ValueError(
                f"{self._get_name()} expects x of rank {self.rank + 3} {layout} "
                f"({self.data_format}), got shape {tuple(x.shape)}"
            )

    def _dropout_masks(self, rate, shape, like, stream):
        """Four per-gate inverted-dropout masks ``(4, *shape)`` scaled by 1/(1-rate); ``stream``
        tells the input masks (0) from the recurrent ones (1) of one seeded call."""
        keep = 1.0 - rate
        shape = (4,) + tuple(shape)
        if self.seed is None:
            u = torch.rand(shape, device=like.device)
        else:
            u = seeded_random.uniform(shape, self.seed, stream,
                                      self._dropout_draws.to(like.device), like.device)
        return torch.where(u < keep, 1.0 / keep, 0.0).to(like.dtype)

    def forward(self, x, initial_state=None, mask=None):
        """Run the layer over ``x``.

        Args:
            x: ``(B, T, *spatial, C)`` (channels_last) or ``(B, T, C, *spatial)`` (channels_first).
            initial_state: None or ``(h0, c0)``, each ``(B, *out_spatial, F)`` /
                ``(B, F, *out_spatial)`` in the layer's data_format.
            mask: None or ``(B, T)`` bool / 0-1 (Keras masking: masked steps carry state and
                output over).

        Returns:
            The output sequence ``(B, T, ...)`` if ``return_sequences`` else the last output step
            ``(B, ...)``; with ``return_state`` a tuple ``(output, h, c)``.
        """
        self._check_input_rank(x)
        # Skipped while compiling: dynamo cannot trace is_lazy(), and a compiled module is
        # initialized before tracing (_infer_parameters).
        if not torch.compiler.is_compiling() and self.has_uninitialized_params():
            return self._initializing_forward(x, initial_state, mask)
        return self._forward(x, initial_state, mask)

    def _forward(self, x, initial_state, mask):
        channels_first = self.data_format == "channels_first"
        x_cl = move_to_last(x, 2) if channels_first else x
        in_channels = self.kernel.shape[-2]
        if x_cl.shape[-1] != in_channels:
            raise ValueError(
                f"{self._get_name()} was built for {in_channels} input channels, got x with "
                f"{x_cl.shape[-1]} channels (shape {tuple(x.shape)}, {self.data_format})"
            )
        batch = x.shape[0]

        if initial_state is not None:
            if isinstance(initial_state, torch.Tensor) or len(initial_state) != 2:
                raise ValueError("initial_state must be a pair (h0, c0)")
            h0, c0 = initial_state
            if channels_first:
                h0, c0 = move_to_last(h0, 1), move_to_last(c0, 1)
            initial_state = (h0, c0)
        if self.stateful and self._state_h is not None:
            kept = self._state_h.shape[0]
            if batch != kept:
                raise ValueError(
                    f"{self._get_name()} is stateful and keeps states for batch size {kept}, "
                    f"but got an input of batch size {batch}; call reset_states() to start "
                    "over with a new batch size"
                )
            if initial_state is None:
                initial_state = (self._state_h, self._state_c)

        input_mask = recurrent_mask = None
        if self.training and self.dropout > 0.0:
            input_mask = self._dropout_masks(self.dropout, (batch,) + x_cl.shape[2:], x_cl, 0)
        if self.training and self.recurrent_dropout > 0.0:
            geom = ConvGeometry.build(
                tuple(x_cl.shape[2:-1]), self.kernel_size, self.strides, self.dilation_rate,
                self.padding,
            )
            recurrent_mask = self._dropout_masks(
                self.recurrent_dropout, (batch,) + geom.out_spatial + (self.filters,), x_cl, 1
            )

        if self.seed is not None and (input_mask is not None or recurrent_mask is not None):
            self._dropout_draws.add_(1)  # the next call draws the next masks of the stream
        seq, h, c = conv_lstm(
            x_cl, self.kernel, self.recurrent_kernel, self.bias, initial_state,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            activation=self.activation, recurrent_activation=self.recurrent_activation,
            go_backwards=self.go_backwards, mask=mask, backend=self.backend,
            input_dropout_mask=input_mask, recurrent_dropout_mask=recurrent_mask,
            cuda_graph=self.cuda_graph,
        )
        if self.stateful:
            self._state_h = h.detach()
            self._state_c = c.detach()

        # Keras returns the last *output* (with a mask it can differ from h: zeros if every
        # step was masked, while h is the initial state).
        output = seq if self.return_sequences else seq[:, -1]
        if channels_first:
            output = move_from_last(output, 2 if self.return_sequences else 1)
            h, c = move_from_last(h, 1), move_from_last(c, 1)
        result = (output, h, c) if self.return_state else output
        if self.activity_regularizer is not None:
            self._activity_penalty = self._compute_activity_penalty(result)
        return result

    # ------------------------------------------------------------------ regularizers, constraints

    def _compute_activity_penalty(self, outputs):
        # Keras (Layer.__call__): the regularizer of every returned tensor, divided by its batch
        # size (divide_no_nan: 0 for an empty batch), summed.
        regularizer = regularizers.get(self.activity_regularizer, "activity_regularizer")
        total = None
        for t in outputs if isinstance(outputs, tuple) else (outputs,):
            penalty = regularizer(t)
            if not isinstance(penalty, torch.Tensor):
                penalty = torch.as_tensor(penalty, dtype=t.dtype, device=t.device)
            if t.dim() > 0:
                batch = t.shape[0]
                penalty = penalty / batch if batch else torch.zeros_like(penalty)
            total = penalty if total is None else total + penalty
        return total

    def _regularized_weights(self):
        # Resolved again so that an attribute reassigned after construction ("l2", a dict) works.
        return [
            (regularizers.get(getattr(self, argument), argument), getattr(self, name))
            for name, argument in (
                ("kernel", "kernel_regularizer"),
                ("recurrent_kernel", "recurrent_regularizer"),
                ("bias", "bias_regularizer"),
            )
        ]

    def regularization_loss(self):
        """Keras ``sum(layer.losses)``: weight penalties plus the last call's activity penalty.

        A 0-dim tensor that backpropagates into the parameters (and, for the activity part, into
        the graph of the **last** forward call -- call this after the forward whose output enters
        your loss; the penalty of earlier calls is replaced). Zero when nothing is configured.
        Lazy (not yet initialized) parameters have no penalty, as unbuilt Keras weights, and
        frozen ones (``requires_grad=False``) neither, as Keras counts only trainable weights.
        """
        total = None
        for regularizer, param in self._regularized_weights():
            if regularizer is None or param is None or is_lazy(param) or not param.requires_grad:
                continue
            penalty = regularizer(param)
            total = penalty if total is None else total + penalty
        if self.activity_regularizer is not None and self._activity_penalty is not None:
            p = self._activity_penalty
            total = p if total is None else total + p.to(total.device)
        if total is None:
            kernel = self.kernel
            dtype = torch.float32 if is_lazy(kernel) else kernel.dtype
            return torch.zeros((), dtype=dtype, device=kernel.device)
        if not isinstance(total, torch.Tensor):
            total = torch.as_tensor(total, dtype=self.kernel.dtype, device=self.kernel.device)
        return total.reshape(())

    @torch.no_grad()
    def apply_constraints(self):
        """Project the parameters in place with their constraints (call after optimizer.step()).

        Keras applies ``kernel_constraint``, ``recurrent_constraint`` and ``bias_constraint``
        after every optimizer update; this does the same for the current values. A no-op for
        parameters without a constraint (or not yet initialized).
        """
        for name, argument in (
            ("kernel", "kernel_constraint"),
            ("recurrent_kernel", "recurrent_constraint"),
            ("bias", "bias_constraint"),
        ):
            constraint = constraints.get(getattr(self, argument), argument)
            param = getattr(self, name)
            if constraint is None or param is None or is_lazy(param):
                continue
            value = constraint(param)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"{argument} returned {got}, expected a tensor of shape {tuple(param.shape)}"
                )
            param.copy_(value)

    def __getstate__(self):
        # The kept activity penalty is a non-leaf tensor (deepcopy/pickle cannot copy those) and
        # belongs to the last call only: do not carry it into copies.
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state["_activity_penalty"] = None
        return state

    # ------------------------------------------------------------------ state

    @property
    def states(self):
        """The kept ``(h, c)`` of a stateful layer in its data_format, or None."""
        if self._state_h is None:
            return None
        if self.data_format == "channels_first":
            return move_from_last(self._state_h, 1), move_from_last(self._state_c, 1)
        return self._state_h, self._state_c

    def reset_states(self):
        """Forget the kept state of a stateful layer (the next call starts from zeros)."""
        self._state_h = None
        self._state_c = None

    reset_state = reset_states  # Keras 3 name

    def extra_repr(self):
        parts = [
            f"in_channels={self.in_channels}" + (" (lazy)" if self.in_channels is None else ""),
            f"filters={self.filters}",
            f"kernel_size={self.kernel_size}",
        ]
        defaults = {
            "strides": ((1,) * self.rank, self.strides),
            "padding": ("valid", self.padding),
            "data_format": ("channels_last", self.data_format),
            "dilation_rate": ((1,) * self.rank, self.dilation_rate),
            "activation": ("tanh", self.activation),
            "recurrent_activation": ("sigmoid", self.recurrent_activation),
            "use_bias": (True, self.use_bias),
            "dropout": (0.0, self.dropout),
            "recurrent_dropout": (0.0, self.recurrent_dropout),
            "seed": (None, self.seed),
            "return_sequences": (False, self.return_sequences),
            "return_state": (False, self.return_state),
            "go_backwards": (False, self.go_backwards),
            "stateful": (False, self.stateful),
            "backend": ("auto", self.backend),
            "cuda_graph": (False, self.cuda_graph),
        }
        for argument in (
            "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
            "activity_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint",
        ):
            defaults[argument] = (None, getattr(self, argument))
        parts += [f"{k}={v!r}" for k, (d, v) in defaults.items() if v != d]
        return ", ".join(parts)


# A Keras ConvLSTM config's arguments, as this layer's constructor takes them (same names).
KERAS_CONFIG_ARGUMENTS = (
    "filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
    "activation", "recurrent_activation", "use_bias", "kernel_initializer",
    "recurrent_initializer", "bias_initializer", "unit_forget_bias", "kernel_regularizer",
    "recurrent_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
    "recurrent_constraint", "bias_constraint", "dropout", "recurrent_dropout", "seed",
    "return_sequences", "return_state", "go_backwards", "stateful",
)
# what load_keras_weights compares: all but what the loaded weights make moot
KERAS_COMPARED_ARGUMENTS = tuple(name for name in KERAS_CONFIG_ARGUMENTS
                                 if not name.endswith("_initializer") and name != "seed")
# config keys that change nothing here: naming, freezing (requires_grad is the user's), the
# dtype policy (``dtype=``), unrolling (a speed choice in Keras), zero_output_for_mask=False
_KERAS_CONFIG_IGNORED = ("name", "trainable", "dtype", "unroll", "zero_output_for_mask")


def keras_config_arguments(config):
    """A Keras ``ConvLSTM1D/2D/3D`` layer config (``layer.get_config()``, or a saved file's)
    -> this library's constructor keyword arguments. A ValueError names what is not
    supported."""
    if not isinstance(config, dict):
        raise TypeError(f"a Keras layer config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(KERAS_CONFIG_ARGUMENTS) - set(_KERAS_CONFIG_IGNORED))
    if unknown:
        raise ValueError(f"Keras config keys not supported by this library: {unknown}")
    if config.get("zero_output_for_mask"):
        raise ValueError("zero_output_for_mask=True is not supported: masked steps carry the "
                         "previous output (Keras' default, zero_output_for_mask=False)")
    kwargs = {name: config[name] for name in KERAS_CONFIG_ARGUMENTS if name in config}
    for name in ("kernel_size", "strides", "dilation_rate"):
        if isinstance(kwargs.get(name), list):  # JSON has no tuples
            kwargs[name] = tuple(kwargs[name])
    return kwargs


_INCOMPARABLE = object()


def _comparable(value):
    """A value to compare arguments by: regularizer and constraint objects by class and
    config; other callables (a user's function) cannot be compared."""
    if hasattr(value, "get_config"):
        return type(value).__name__, value.get_config()
    if callable(value):
        return _INCOMPARABLE
    return value


_BASE_SIGNATURE = inspect.signature(_ConvLSTM.__init__)
_PUBLIC_SIGNATURE = _BASE_SIGNATURE.replace(
    parameters=[p for name, p in _BASE_SIGNATURE.parameters.items() if name != "rank"]
)


class ConvLSTM1D(_ConvLSTM):
    """1D convolutional LSTM, Keras 3 ``keras.layers.ConvLSTM1D`` semantics.

    x ``(B, T, W, C)`` (channels_last) or ``(B, T, C, W)`` (channels_first). Arguments as in Keras
    (same names and order), then keyword-only ``in_channels`` (None: lazy), ``backend``
    ("auto", "triton", "reference"), ``cuda_graph`` (False, True, "auto"), ``device``,
    ``dtype``. See ``convlstm_triton.keras.layers``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(1, *args, **kwargs)

    __init__.__signature__ = _PUBLIC_SIGNATURE


class ConvLSTM2D(_ConvLSTM):
    """2D convolutional LSTM, Keras 3 ``keras.layers.ConvLSTM2D`` semantics.

    x ``(B, T, H, W, C)`` (channels_last) or ``(B, T, C, H, W)`` (channels_first). Arguments as
    in Keras (same names and order), then keyword-only ``in_channels`` (None: lazy), ``backend``
    ("auto", "triton", "reference"), ``cuda_graph`` (False, True, "auto"), ``device``,
    ``dtype``. See ``convlstm_triton.keras.layers``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(2, *args, **kwargs)

    __init__.__signature__ = _PUBLIC_SIGNATURE


class ConvLSTM3D(_ConvLSTM):
    """3D convolutional LSTM, Keras 3 ``keras.layers.ConvLSTM3D`` semantics.

    x ``(B, T, D, H, W, C)`` (channels_last) or ``(B, T, C, D, H, W)`` (channels_first).
    Arguments as in Keras (same names and order), then keyword-only ``in_channels`` (None: lazy),
    ``backend`` ("auto", "triton", "reference"), ``cuda_graph`` (False, True, "auto"),
    ``device``, ``dtype``. See ``convlstm_triton.keras.layers``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(3, *args, **kwargs)

    __init__.__signature__ = _PUBLIC_SIGNATURE
