"""Recording the library's kernel launches without a GPU: the machinery the static reports share
(``bench/static_perf.py`` for sm_90, ``bench/amd_static.py`` for AMD).

The real ``conv_lstm(..., backend="triton", padding="same")`` runs on CPU tensors of the
problem's real sizes (``torch.empty``: nothing is computed) inside ``patched(recorder, ...)``,
which replaces

* ``JITFunction.run`` by ``recorder.launch``: each launch is compiled ahead of time (the
  recorder's ``compile``) and recorded with its grid and arguments (``make_launch``); a launch
  the GPU would refuse raises in the recorder's ``check``;
* ``convlstm_triton.tuning.pick_config`` by ``recorder.pick_config``: for every (kernel, key)
  it runs every candidate config the launcher kept (one compile each, failures recorded) and
  returns the one the recorder's ``choose`` picks; the real launches then use it;
* what ties the launch path to a real device: the interpreter check (CPU tensors take the
  Triton path), the tuning trials' scratch copies (empty tensors, not copies of real-size
  ones), the SM count (``sm_count``) and, with ``platform=``, what
  ``convlstm_triton.platform.platform`` says the device can do (CPU tensors are a Hopper in
  the library; an AMD report passes its ``Platform``, so the pruners budget its LDS, TMA is
  off and fp32 dots take its precision).

Must run without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import contextlib
import json
import sys
from dataclasses import replace

import torch
from triton.runtime.jit import JITFunction


class Recorder:
    """JITFunction.run and tuning.pick_config stand-ins for one analyzed problem. Subclasses
    say how a launch compiles (``compile``), what the GPU would refuse (``check``), what is
    recorded (``make_launch``) and which trial config is used (``choose``)."""

    def __init__(self):
        self.frames = [[]]  # launch lists: [0] the real launches, then open trials
        self.tunings = []  # one dict per pick_config call that tuned
        self.choices = {}  # (kernel_name, key) -> chosen config
        self.tag = None  # (kernel_name, config, flop) of the next launch

    def compile(self, fn, args, kwargs):
        """(compile key, CompiledKernel) of ``fn[grid](*args, **kwargs)``."""
        raise NotImplementedError

    def check(self, key, kernel):
        """Raise where the GPU would refuse to launch ``kernel`` (resources)."""

    def make_launch(self, fn, key, kernel, grid, named, tag):
        """The record of one launch: ``named`` its arguments by parameter name (constexprs and
        options included), ``tag`` (kernel_name, config, flop) of pick_config or None."""
        raise NotImplementedError

    def choose(self, trials):
        """Index of the trial whose config the real launches use; by default the first that
        compiled and launched (the launcher's default, configs[0], where it did), as
        ``tuning.pick_config`` does where nothing is timed."""
        return next((i for i, t in enumerate(trials) if t["error"] is None and t["launches"]),
                    0)

    def launch(self, fn, args, kwargs, grid):
        key, kernel = self.compile(fn, args, kwargs)
        named = dict(zip(fn.signature.parameters, args)) | kwargs
        if callable(grid):
            grid = grid(named)
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        self.check(key, kernel)
        tag, self.tag = self.tag, None
        self.frames[-1].append(self.make_launch(fn, key, kernel, grid, named, tag))

    def pick_config(self, kernel_name, key, configs, run, device, *, flop=None, **_):
        if (kernel_name, key) in self.choices:
            chosen = self.choices[(kernel_name, key)]
        else:
            trials = []
            for cfg in configs:
                self.frames.append([])
                self.tag = (kernel_name, dict(cfg), flop)
                error = None
                try:
                    run(cfg)
                except Exception as exc:  # a config that cannot compile or launch is skipped
                    error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                self.tag = None
                trials.append({"config": dict(cfg), "error": error[:300] if error else None,
                               "launches": self.frames.pop()})
            best = self.choose(trials)
            chosen = configs[best]
            self.choices[(kernel_name, key)] = chosen
            self.tunings.append({"kernel": kernel_name, "key": repr(key), "trials": trials,
                                 "chosen": best})
        self.tag = (kernel_name, dict(chosen), flop)
        return chosen


@contextlib.contextmanager
def simulated_platform(platform):
    """Within: ``convlstm_triton.platform.platform(device)`` answers ``platform`` for CPU
    tensors, in every module of the package that imported the function (the launchers' pruners,
    the functional API's dot precision, tuning's names); other devices are asked as always."""
    import convlstm_triton.platform as platforms

    original = platforms.platform

    def simulated(device):
        return platform if torch.device(device).type == "cpu" else original(device)

    owners = [module for name, module in list(sys.modules.items())
              if (name == "convlstm_triton" or name.startswith("convlstm_triton."))
              and getattr(module, "platform", None) is original]
    for module in owners:
        module.platform = simulated
    try:
        yield
    finally:
        for module in owners:
            module.platform = original


@contextlib.contextmanager
def patched(recorder, sm_count, platform=None):
    """The launch path of ``convlstm_triton`` recording into ``recorder`` (see the module
    docstring); grids sized by the SM (CU) count are sized for ``sm_count``."""
    from convlstm_triton import functional, launch_plans, launchers, tuning

    saved = [(JITFunction, "run"), (tuning, "pick_config"),
             (functional, "triton_interpreter_enabled"), (launchers, "_scratch_like"),
             (launchers, "_sm_count")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in saved if hasattr(owner, name)]

    def run(self, *args, grid, warmup, **kwargs):
        recorder.launch(self, args, kwargs, grid)

    replacements = {
        "run": run, "pick_config": recorder.pick_config,
        "triton_interpreter_enabled": lambda: True,  # CPU tensors may take the Triton path
        # trials write scratch outputs: empty ones (nothing runs), not copies of real-size ones
        "_scratch_like": lambda t: None if t is None else torch.empty_like(t),
        "_sm_count": lambda device: sm_count,  # grids sized for the modelled GPU, not the CPU
    }
    for owner, name, _ in saved:
        setattr(owner, name, replacements[name])
    # plans bound under another platform or recorder must not be replayed here
    launch_plans.clear_plans()
    try:
        with simulated_platform(platform) if platform is not None else contextlib.nullcontext():
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        launch_plans.clear_plans()


# ---------------------------------------------------------------------------------------------
# problems


def forward_variants():
    """Every ``forward_variant`` the library accepts, "auto" first."""
    from convlstm_triton.validation import FORWARD_VARIANTS

    return list(FORWARD_VARIANTS)


def synthetic_shape(base, **overrides):
    """``base`` (a bench_convlstm Shape) with other sizes (batch, steps, spatial, in_channels,
    filters, kernel), named after what changed."""
    shape = replace(base, **overrides)
    tag = ",".join(f"{k}={v}" for k, v in overrides.items())
    return replace(shape, name=f"{base.name}[{tag}]") if overrides else shape


def run_problem(shape, dtype, variant, mode):
    """One call of the library on CPU tensors of ``shape`` (``torch.empty``): ``mode`` "fwd"
    (forward under no_grad), "train_fwd" (the forward of a training step only), "train"
    (forward + backward with the library's default recompute_gates), "train_saved" /
    "train_recompute" (with the pre-activations saved by forward / recomputed in backward).
    fp32 asks for TF32 dots (``allow_tf32=True``); the platform decides whether they are."""
    from convlstm_triton import functional

    ks = shape.kernel_size
    x = torch.empty(shape.batch, shape.steps, *shape.spatial, shape.in_channels, dtype=dtype)
    kernel = torch.empty(*ks, shape.in_channels, 4 * shape.filters, dtype=dtype)
    recurrent = torch.empty(*ks, shape.filters, 4 * shape.filters, dtype=dtype)
    bias = torch.zeros(4 * shape.filters, dtype=dtype)
    options = dict(backend="triton", padding="same", forward_variant=variant, allow_tf32=True)
    if mode == "fwd":
        with torch.no_grad():
            functional.conv_lstm(x, kernel, recurrent, bias, **options)
    else:
        if mode in ("train_saved", "train_recompute"):
            options["recompute_gates"] = mode == "train_recompute"
        leaves = [t.requires_grad_() for t in (x, kernel, recurrent, bias)]
        seq = functional.conv_lstm(*leaves, **options)[0]
        if mode != "train_fwd":
            seq.sum().backward()


_CFG_ABBREV = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_F": "F", "BLOCK_K": "K", "num_warps": "w",
               "num_stages": "s", "BLOCK_R": "R", "BLOCK_C": "C"}


def config_text(cfg):
    """A launch config in a table cell: "M128 F64 K64 w16 s4"."""
    if not cfg:
        return "-"
    return " ".join(f"{_CFG_ABBREV.get(k, k + '=')}{v}" for k, v in cfg.items())


def write_report(text, markdown_path, json_path, payload):
    """Print a report's markdown; write it to ``markdown_path`` and ``payload`` as JSON to
    ``json_path`` where given (each None: not written)."""
    print(text)
    if markdown_path:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
