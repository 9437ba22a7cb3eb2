"""Launch plans: a kernel launch repeated through a sequence, bound once and replayed cheaply.

A step kernel is launched at every time step, and the chunk kernels (the input projection, the
input and weight gradients) at every time chunk, with the same grid, config, integers and
constexprs; only some pointers move (the step's slice of h, c, xg, the pre-activations; the
chunk's frames). Going through ``kernel[grid](...)`` every time costs ~25-35 µs of Python in
Triton's ``JITFunction.run`` (binding ~70 arguments, specializing them, hashing the key), on
top of the launcher's own work (configs, tuning key, grid, constexprs). A ``StepLaunch`` does
that once per sequence and kernel: the first launch goes through the launcher and Triton's JIT
as always (tuning, compiling) and is recorded; every later launch puts the moving pointers
(base pointer + index x step bytes: no tensor views) into the recorded argument list and calls
the compiled kernel's launcher directly, as ``JITFunction.run`` itself does after its cache
lookup.

Across calls: a plan's Skeleton (everything but the tensors) is kept per problem
(``problem_plans``: the sequence op's shapes, dtypes, device, flags, the launchers' settings and
the tuning state) and a later call of the same problem binds it to its own tensors through the
launcher's binder (``launchers.*_binder``: the same function that picks the launch's tensors
for the launcher, so the two cannot drift apart), so that its first launch of each kernel is a
replay as well: no launcher, no tuning lookup, no JIT. A skeleton holds no tensor (absent
optional tensors point to one persistent dummy per device and dtype, ``launchers.dummy``), and
binders allocate a call's own outputs as the launchers do.

Safe because everything Triton specializes a compiled kernel on is fixed for the plan (dtypes,
integers, constexprs, options, the fixed pointers' alignment) except the 16-byte alignment of
the moving pointers, which is checked at every launch, and of the fixed ones, checked when a
later call binds the skeleton: a new alignment pattern takes the JIT path (and compiles the
kernel it needs), and so does a slice with another sample stride. The
JIT path is also taken where there is nothing compiled to call: Triton's interpreter (CPU), a
Triton whose compiled kernels lack that launcher interface, or ``CONVLSTM_TRITON_FAST_LAUNCH=0``.
``bench/host_overhead.py --check`` launches every replay (a later call's first launches
included) through the JIT path too and compares kernel, grid and arguments (CI runs it on the
Triton it installs; checked by hand on Triton 3.6 and 3.9, 2026-11-29).
"""

import contextlib
import contextvars
import os
import warnings
from collections import OrderedDict

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction


def fast_launch_enabled():
    return os.environ.get("CONVLSTM_TRITON_FAST_LAUNCH", "1") not in ("0", "false", "False")


_TRACEABLE = contextvars.ContextVar("convlstm_triton_traceable_launches", default=False)


@contextlib.contextmanager
def traceable_launches():
    """Launches made inside go through ``torch.library.wrap_triton`` (so that make_fx, export
    and Inductor record the kernels themselves: ``traceable_ops``), with no plans, no raw
    pointers and no config measured: the tensors may be fake (tracing) or real (the op run
    eagerly, where ``wrap_triton`` hands back the kernel)."""
    token = _TRACEABLE.set(True)
    try:
        yield
    finally:
        _TRACEABLE.reset(token)


def traceable():
    """Inside ``traceable_launches``."""
    return _TRACEABLE.get()


class Frames:
    """A (B, N, ...) tensor whose slices ``[:, i]`` (or ``[:, i:i + length]``) kernels read or
    write: as views for the JIT path, as raw pointers for a bound launch (no tensor is made per
    step). Holds the tensor, so that its memory lives as long as the plans that point into it."""

    __slots__ = ("tensor", "ptr0", "step", "stride0", "length")

    def __init__(self, tensor, length=None):
        self.tensor = tensor
        # a traced (fake) tensor has no memory; only replays read the pointer
        self.ptr0 = None if _TRACEABLE.get() else tensor.data_ptr()
        self.step = tensor.stride(1) * tensor.element_size()
        self.stride0 = tensor.stride(0)
        self.length = length

    @staticmethod
    def of_state(tensor):
        """A (B, ...) tensor as frames of one slice (index 0): h0 beside the states."""
        return Frames(tensor.unsqueeze(1))

    def view(self, index):
        if self.length is None:
            return self.tensor[:, index]
        return self.tensor[:, index:index + self.length]


def views(frames):
    """(Frames, index) pairs (or None) -> the slices as tensors (or None)."""
    return [None if frame is None else frame[0].view(frame[1]) for frame in frames]


class Record:
    """What a launcher's final launch was: the kernel, its grid, every argument by parameter
    name (constexprs included), the launch options, and what Triton returned (the compiled
    kernel on a GPU)."""

    __slots__ = ("kernel", "grid", "_args", "options", "compiled", "signature", "template",
                 "_constants")

    def __init__(self, kernel, grid, args, options, compiled, signature=None, template=None,
                 constants=None):
        self.kernel, self.grid, self._args = kernel, grid, args
        self.options, self.compiled = options, compiled
        # where ``launch`` computed them: _signature(args, options) and the argument list
        self.signature, self.template = signature, template
        # a bound plan's record: ``args`` holds its tensors, these its other arguments (merged
        # when first read: most bound plans' records never are)
        self._constants = constants

    @property
    def args(self):
        if self._constants is not None:
            self._args = {**self._constants, **self._args}
            self._constants = None
        return self._args


def launch(kernel, grid, args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, returning its Record. A launch whose signature (see
    ``_signature``) Triton's JIT compiled before skips the JIT's binding and lookup: the kernel
    compiled for that signature is launched directly."""
    names, params = _arg_names(kernel)
    by_name = dict(zip(names, args))
    options = {}
    for name, value in kwargs.items():
        (by_name if name in params else options)[name] = value
    if _TRACEABLE.get():
        # Inductor takes num_warps / num_stages, not the other compile options: FMA
        # contraction is then Triton's default, which is on (as FP_FUSION) up to Triton 3.9
        traced = {name: value for name, value in kwargs.items() if name != "enable_fp_fusion"}
        torch.library.wrap_triton(kernel)[tuple(grid)](*args, **traced)
        return Record(kernel, grid, by_name, options, None)
    key = signature = template = None
    if (isinstance(kernel, JITFunction) and args[0].device.type in DIRECT_DEVICE_TYPES
            and fast_launch_enabled() and len(by_name) == len(names)):
        device = driver.active.get_current_device()
        # parameter order (keywords may come in any order): the compiled kernel's argument list
        by_name = {name: by_name[name] for name in names}
        template = []  # the arguments in order, tensors as data pointers
        signature = _signature(by_name, options, (), template)
        key = (kernel, signature, device)
        compiled = _LAUNCHED.get(key)
        if compiled is not None:
            _run(compiled, _grid3(grid), driver.active.get_current_stream(device), _hooks(),
                 template)
            return Record(kernel, grid, by_name, options, compiled, signature, template)
    compiled = kernel[grid](*args, **kwargs)
    if key is not None and (launcher := _launcher_of(compiled)) is not None:
        _LAUNCHED[key] = launcher
        drop_oldest(_LAUNCHED, LAUNCHED_KEPT)
    return Record(kernel, grid, by_name, options, compiled, signature, template)


def drop_oldest(cache, kept):
    """Trim a dict cache to ``kept`` entries, the oldest inserted first (FIFO: hits pay nothing;
    an entry dropped while still in use is made again at its next miss). Tolerates another
    thread changing the dict meanwhile."""
    while len(cache) > kept:
        try:
            cache.pop(next(iter(cache)), None)
        except (RuntimeError, StopIteration):  # changed under us, or emptied: try again / done
            if not cache:
                return


# (kernel, signature of every argument, device) -> the compiled kernel Triton's JIT launched;
# at most LAUNCHED_KEPT (a distinct size of any argument is another signature)
_LAUNCHED = {}
LAUNCHED_KEPT = 2048
# Devices whose launches may skip the JIT (tools that compile or fake launches on the CPU
# without a driver, e.g. bench/static_perf.py, must not reach the driver from here;
# bench/host_overhead.py, which fakes one, adds "cpu").
DIRECT_DEVICE_TYPES = ("cuda",)


def _run(kernel, grid, stream, hooks, args):
    """The compiled kernel's launch, as ``JITFunction.run`` makes it after its cache lookup:
    ``grid`` of 3 dims, ``hooks`` (launch enter hook, exit hook) as ``_hooks`` gives them."""
    enter, leave = hooks
    metadata = kernel.launch_metadata(grid, stream, *args) if enter else None
    kernel.run(grid[0], grid[1], grid[2], stream, kernel.function, kernel.packed_metadata,
               metadata, enter, leave, *args)


def _grid3(grid):
    grid = tuple(grid)
    return grid + (1,) * (3 - len(grid))


def _hooks():
    return knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook


_names = {}  # kernel -> (parameter names in order, as a set)
_slot_positions = {}  # (kernel, slots) -> the slots' parameter positions


def _positions(kernel, names, slots):
    positions = _slot_positions.get((kernel, slots))
    if positions is None:
        positions = _slot_positions[(kernel, slots)] = [names.index(name) for name in slots]
    return positions


def _arg_names(kernel):
    names = _names.get(kernel)
    if names is None:
        listed = getattr(kernel, "arg_names", None)
        if listed is None:  # the interpreter's wrapper keeps the JITFunction
            listed = kernel.fn.arg_names
        names = _names[kernel] = (list(listed), frozenset(listed))
    return names


def _launcher_of(compiled):
    """The compiled kernel's direct launch interface (``run``, ``function``,
    ``packed_metadata``, ``launch_metadata``: Triton 3.6 to 3.9, CUDA and HIP backends alike:
    ``run`` is the active driver's launcher, called as ``JITFunction.run`` calls it), or None
    (the interpreter; a compiled kernel without it: warned once, its launches take the JIT)."""
    if compiled is None:
        return None
    if hasattr(compiled, "result"):  # an async compile's future
        compiled = compiled.result()
    if all(hasattr(compiled, a) for a in LAUNCH_INTERFACE):
        return compiled
    _warn_no_launcher(compiled)
    return None


LAUNCH_INTERFACE = ("run", "function", "packed_metadata", "launch_metadata")
_warned_no_launcher = []


def _warn_no_launcher(compiled):
    """Once per process: launch plans are off for kernels compiled without the interface."""
    if _warned_no_launcher:
        return
    _warned_no_launcher.append(type(compiled))
    missing = [a for a in LAUNCH_INTERFACE if not hasattr(compiled, a)]
    warnings.warn(f"convlstm_triton: this Triton's compiled kernels ({type(compiled).__name__}) "
                  f"lack {', '.join(missing)} of the launch interface launch plans replay "
                  "through: every launch goes through Triton's JIT instead (same results, more "
                  "host time per launch)", RuntimeWarning, stacklevel=3)


# (kernel, signature of the fixed arguments) -> {(alignment pattern, device): compiled kernel}
_COMPILED = {}


def _signature(args, options, moving=(), template=None):
    """What Triton specializes a compiled kernel on, exactly or more finely: each pointer's
    dtype and, unless it is ``moving``, its 16-byte alignment; every other value (integers,
    constexprs); and the launch options. ``template``: a list to append the arguments to, in
    order, tensors as their data pointers (a plan's argument list, made in the same pass)."""
    key = []
    for name, value in args.items():
        if isinstance(value, torch.Tensor):
            ptr = value.data_ptr()
            key.append((name, value.dtype) if name in moving else
                       (name, value.dtype, ptr % 16 == 0))
            if template is not None:
                template.append(ptr)
        else:
            key.append((name, value))
            if template is not None:
                template.append(value)
    return tuple(key) + tuple(sorted(options.items()))


class Skeleton:
    """What a plan keeps across calls of one problem (``problem_plans``): everything of its
    launch but the tensors. The kernel, grid and argument template (pointers as the recording
    call's integers: a later call rebinds every tensor argument), the positions of the moving
    slots and of the fixed tensor arguments (those of the sequence: weights, masks, its
    buffers), the fixed ones' alignment bits, the non-tensor arguments by name (``constants``)
    and the fixed tensors' shapes and dtypes (``shapes``: for binders that allocate)."""

    __slots__ = ("kernel", "grid", "options", "template", "positions", "stride0", "compiled",
                 "fixed", "fixed_names", "fixed_pattern", "constants", "shapes")

    def __init__(self, plan, record):
        self.kernel, self.grid, self.options = record.kernel, plan.grid, record.options
        self.template, self.positions, self.stride0 = plan.template, plan.positions, plan.stride0
        self.compiled = plan.compiled
        names = _arg_names(record.kernel)[0]
        slots = set(plan.slots)
        self.fixed = tuple((position, name) for position, name in enumerate(names)
                           if name not in slots and isinstance(record.args[name], torch.Tensor))
        self.fixed_names = frozenset(name for _, name in self.fixed)
        self.fixed_pattern = _alignment(record.args[name] for _, name in self.fixed)
        self.constants = {name: value for name, value in record.args.items()
                          if not isinstance(value, torch.Tensor)}
        self.shapes = {name: (tuple(record.args[name].shape), record.args[name].dtype)
                       for name in self.fixed_names}

    def bind(self, bind, jit_launch, slots, owned, context):
        """This call's plan: ``bind(self)`` gives this call's tensor for every fixed argument.
        None where it cannot replay (a fixed tensor aligned otherwise, or a binder that does
        not give exactly the fixed arguments): the caller takes the JIT path. ``context``:
        the call's ``launch_context()``."""
        tensors = bind(self)
        if tensors.keys() != self.fixed_names:
            return None
        template = self.template.copy()
        pattern = 1
        for position, name in self.fixed:
            ptr = template[position] = tensors[name].data_ptr()
            pattern = (pattern << 1) | (ptr & 15 == 0)
        if pattern != self.fixed_pattern:  # as _alignment
            return None
        record = Record(self.kernel, self.grid, tensors, self.options, None,
                        constants=self.constants)
        return StepLaunch(record, slots, jit_launch, owned, skeleton=self, template=template,
                          context=context)


def launch_context():
    """(device, stream, launch hooks) of the launches made now. A plan lives for one call of
    the sequence op, which launches on one device and stream: looked up once per call (per
    ``Planned``), not at every launch."""
    device = driver.active.get_current_device()
    return device, driver.active.get_current_stream(device), _hooks()


def _alignment(tensors):
    """16-byte alignment bits of tensors, as one integer."""
    pattern = 1
    for t in tensors:
        pattern = (pattern << 1) | (t.data_ptr() & 15 == 0)
    return pattern


class StepLaunch:
    """One kernel launched once per time step, bound from the Record of a first launch.
    ``slots``: the pointer parameters that move with the step (every one that does: an
    argument left out would be replayed from the record). ``jit_launch(*views)``: the
    launcher's own path, for launches the plan cannot replay.

    ``owned``: output buffers that the launcher allocates at every launch (partial sums, a
    temporary): a replay writes the record's instead, which the caller reads from the Record
    that ``__call__`` returns.

    ``__call__(*frames)``: one ``(Frames, index)`` per slot in ``slots`` order, or None where
    the slot's tensor is absent (absent at every step: the record's dummy is passed).

    ``skeleton``/``template``: a plan of a later call, bound from the plan an earlier call
    recorded (``Skeleton.bind``); ``self.skeleton`` is what a later call binds (None where
    nothing can be replayed)."""

    def __init__(self, record, slots, jit_launch, owned=(), skeleton=None, template=None,
                 context=None):
        self.slots, self.jit_launch, self.owned = slots, jit_launch, owned
        self.record = record  # its tensors stay alive for the raw pointers below
        self.replays = 0
        self.skeleton = skeleton
        if skeleton is not None:
            self.positions, self.stride0 = skeleton.positions, skeleton.stride0
            self.template, self.grid, self.compiled = template, skeleton.grid, skeleton.compiled
            self.fast = True
            self.device, self.stream, self.hooks = context or launch_context()
            return
        names = _arg_names(record.kernel)[0]
        self.positions = _positions(record.kernel, names, slots)
        # a moving tensor's sample stride is an integer argument of the compiled kernel: a
        # slice with another one (a shorter last time chunk) takes the JIT path
        self.stride0 = [getattr(record.args[name], "stride", lambda _: None)(0)
                        for name in slots]
        self.template = record.template
        if self.template is None:
            self.template = [value.data_ptr() if isinstance(value, torch.Tensor) else value
                             for value in (record.args[name] for name in names)]
        self.grid = _grid3(record.grid)
        kernel = _launcher_of(record.compiled) if fast_launch_enabled() else None
        self.fast = kernel is not None
        if self.fast:
            self.device, self.stream, self.hooks = context or launch_context()
            # compiled kernels are shared by the plans of every call with this signature: the
            # record's, with the moving pointers' alignment left out
            moving = set(slots)
            signature = (record.signature if record.signature is not None else
                         _signature(record.args, record.options))
            signature = tuple(entry[:2] if entry[0] in moving else entry
                              for entry in signature)
            self.compiled = _COMPILED.setdefault((record.kernel, signature), {})
            pattern = _alignment(record.args[name] for name in slots)
            self.compiled[(pattern, self.device)] = kernel
            self.skeleton = Skeleton(self, record)

    def __call__(self, *frames):
        """Launch; returns the Record of the launch made (this plan's own when replayed: its
        buffers are the ones written)."""
        if not self.fast:
            return self.jit_launch(*views(frames))
        args = self.template.copy()
        pattern = 1
        for position, frame, stride0 in zip(self.positions, frames, self.stride0):
            if frame is None:  # absent at every step: the record's dummy, as at recording
                ptr = args[position]
            else:
                f, index = frame
                if f.stride0 != stride0:
                    return self.jit_launch(*views(frames))
                ptr = args[position] = f.ptr0 + index * f.step
            pattern = (pattern << 1) | (ptr % 16 == 0)
        kernel = self.compiled.get((pattern, self.device))
        if kernel is None:  # first launch with this alignment on this device: compile
            record = self.jit_launch(*views(frames))
            kernel = _launcher_of(record.compiled)
            if kernel is not None:
                self.compiled[(pattern, self.device)] = kernel
            return record
        self.replays += 1
        _run(kernel, self.grid, self.stream, self.hooks, args)
        return self.record


class Planned:
    """Launches of one kernel through plans: ``key`` groups the launches whose non-moving
    arguments are the same (the caller's flags: first step, last chunk...); the first launch of
    a key goes through ``jit_launch`` and becomes the key's plan.

    Across calls: ``shared`` (a dict of ``problem_plans``: the same problem, so the same
    launches) keeps each key's Skeleton, and a later call binds it with ``bind`` (the
    launcher's binder: ``bind(skeleton)`` -> this call's tensor for each fixed argument)
    instead of launching through the JIT: its first launch of a key is a replay too."""

    def __init__(self, jit_launch, slots, owned=(), bind=None, shared=None):
        self.jit_launch, self.slots, self.owned = jit_launch, slots, owned
        self.bind, self.shared = bind, shared if bind is not None else None
        self.plans = {}
        self.context = None  # launch_context(), looked up at the first plan bound

    def __call__(self, key, *frames):
        """Launch; returns the Record of the launch made (see ``StepLaunch.__call__``)."""
        if _TRACEABLE.get():  # nothing to replay: every launch is recorded by the tracer
            return self.jit_launch(*views(frames))
        plan = self.plans.get(key)
        if plan is None:
            skeleton = self.shared.get(key) if self.shared is not None else None
            if skeleton is not None:
                if self.context is None:
                    self.context = launch_context()
                plan = skeleton.bind(self.bind, self.jit_launch, self.slots, self.owned,
                                     self.context)
            if plan is None:
                record = self.jit_launch(*views(frames))
                plan = self.plans[key] = StepLaunch(record, self.slots, self.jit_launch,
                                                    self.owned)
                if self.shared is not None and plan.skeleton is not None:
                    self.shared[key] = plan.skeleton
                return record
            self.plans[key] = plan
        return plan(*frames)


# problem key -> {plan kind: {plan key: Skeleton}}, the most recently used last
_PROBLEMS = OrderedDict()
# problems whose skeletons are kept (a few KB each): a model's layers and both directions of
# their training steps, with room for several sequence lengths
PROBLEMS_KEPT = 256


def problem_plans(key):
    """The plans' skeletons of one problem across calls: a dict of dicts (one per plan kind)
    for ``Planned(shared=...)``. ``key`` must fix every launch of the problem but its tensors
    (shapes, dtypes, device, flags, the launchers' settings, the tuned configs)."""
    plans = _PROBLEMS.get(key)
    if plans is None:
        plans = _PROBLEMS[key] = {}
        if len(_PROBLEMS) > PROBLEMS_KEPT:
            _PROBLEMS.popitem(last=False)
    else:
        try:
            _PROBLEMS.move_to_end(key)
        except KeyError:  # dropped meanwhile by another thread (autograd's): still usable
            pass
    return plans


def clear_plans():
    """Forget every problem's plans (the next call of each launches through the JIT again)."""
    _PROBLEMS.clear()
