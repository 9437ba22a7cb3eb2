"""Compiling a Triton launch ahead of time, without a GPU or a driver: for sm_90 (the default)
or an AMD target.

``compile_launch(kernel, args, kwargs)`` compiles ``kernel[grid](*args, **kwargs)`` for
``GPUTarget("cuda", 90, 32)`` through Triton's NVIDIA backend (its bundled ptxas), specialized
exactly as Triton's JIT would on the GPU (``_jit_specialization``: integers equal to 1 become
constexprs, multiples of 16 and 16-byte aligned pointers get divisibility hints). Tensors may be
CPU tensors of any size (``torch.empty``): only their dtype and alignment matter.

``compile_launch(..., target=hip_target("gfx942"))`` compiles for an AMD GPU through Triton's
HIP backend (its bundled LLVM AMDGPU code generator and linker; no ROCm install): the JIT's
specialization is then the HIP backend's own (it adds the ``tt.pointer_range`` 32 hint of
buffer loads to tensors under 2 GiB, as on the GPU), and ``kernel.asm["amdgcn"]`` is the
assembly ``perfmodel.amdgcn`` reads. ``num_warps`` counts 64-lane wavefronts there.

Must run in a process without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import inspect
import os

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
AMD_WAVE_SIZE = 64  # CDNA (gfx90a, gfx942, gfx950): 64-lane wavefronts


def hip_target(arch):
    """The GPUTarget of an AMD arch ("gfx942", "gfx90a")."""
    return GPUTarget("hip", arch, AMD_WAVE_SIZE)

POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
                 torch.int8: "*i8", torch.int32: "*i32", torch.int64: "*i64"}
compiled = {}  # compile key -> (CompiledKernel, names of the true boolean constexprs)


def _signature(kernel, args, kwargs):
    """Types, constexprs, and the divisibility-by-16 hints that Triton's JIT gives a launch
    (integers that are multiples of 16, 16-byte aligned pointers): without them the compiler
    could not vectorize what it does on the GPU. The fallback of ``_jit_specialization`` for a
    Triton without the JIT's own binder."""
    params = list(inspect.signature(kernel.fn).parameters.values())
    bound = dict(zip((p.name for p in params), args))
    bound.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(params):
        value = bound[param.name]
        if "constexpr" in str(param.annotation):
            signature[param.name] = "constexpr"
            constexprs[(index,)] = value
            continue
        if isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
            divisible = value.data_ptr() % 16 == 0
        elif isinstance(value, bool):
            signature[param.name] = "i1"
            divisible = False
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            divisible = value % 16 == 0
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {param.name}={value!r}")
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    # launch options (num_warps, num_stages, enable_fp_fusion, ...): the keywords that are not
    # kernel parameters
    names = {param.name for param in params}
    options = {"num_warps": 4, "num_stages": 3} | {k: v for k, v in kwargs.items()
                                                   if k not in names}
    return signature, constexprs, attrs, options


_binders = {}


def _jit_specialization(kernel, args, kwargs, target=TARGET):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` computes them on a
    device of ``target``: Triton's own binder and ``_pack_args`` (integers equal to 1 become
    constexprs, multiples of 16 and 16-byte aligned pointers get divisibility hints, options are
    the backend's parsed defaults plus num_warps/num_stages). Falls back to ``_signature`` where
    this Triton lacks those internals (sm_90 only: its default options are NVIDIA's)."""
    try:
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError:
        create_function_from_signature = None
    if create_function_from_signature is None or not hasattr(kernel, "_pack_args"):
        if target != TARGET:
            raise RuntimeError(f"this Triton ({triton.__version__}) lacks the JIT internals "
                               f"that specialize a launch for {target}")
        return _signature(kernel, args, kwargs)
    if (kernel, target) not in _binders:
        backend = make_backend(target)
        _binders[(kernel, target)] = (backend, create_function_from_signature(
            kernel.signature, kernel.params, backend))
    backend, binder = _binders[(kernel, target)]
    kwargs = dict(kwargs)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args,
                                                              specialization, options)
    return signature, constexprs, attrs, options.__dict__


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(_hashable(v) for v in value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def compile_launch(kernel, args, kwargs, target=TARGET):
    """(key, CompiledKernel) of one launch ``kernel[grid](*args, **kwargs)``, compiled for
    ``target`` (sm_90 by default) once per (kernel, signature, constexprs, options, attrs): T
    time steps compile once. The options hold the target's arch, so keys of two targets
    differ."""
    signature, constexprs, attrs, options = _jit_specialization(kernel, args, kwargs, target)
    key = (kernel.fn.__name__, tuple(signature.items()), _hashable(constexprs),
           _hashable({k: v for k, v in options.items() if k in ("num_warps", "num_stages")}),
           _hashable(options), _hashable(attrs))
    if key not in compiled:
        kernel_bin = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                    target=target, options=options)
        names = list(signature)
        flags = {names[index]: value for (index,), value in constexprs.items()
                 if isinstance(value, bool) and value}
        compiled[key] = (kernel_bin, sorted(flags))
    return key, compiled[key][0]


INTERPRETER_MESSAGE = ("run without TRITON_INTERPRET: the kernels must be compiled, not "
                       "interpreted")


def interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def sm90_unavailable():
    """Why this Triton cannot compile and disassemble for sm_90 ahead of time, or None."""
    try:
        from triton.compiler.compiler import make_backend

        from .sass import nvidia_tool

        make_backend(TARGET)
        for tool in ("cuobjdump", "nvdisasm"):
            nvidia_tool(tool)
    except Exception as exc:  # an ImportError, a backend without NVIDIA, a missing binary
        return f"{type(exc).__name__}: {exc}"
    return None


def hip_unavailable(arch="gfx942"):
    """Why this Triton cannot compile for an AMD ``arch`` ahead of time (no HIP backend, or
    one without the JIT internals ``_jit_specialization`` needs), or None."""
    try:
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature  # noqa: F401

        make_backend(hip_target(arch))
    except Exception as exc:  # an ImportError, a Triton without the AMD backend
        return f"{type(exc).__name__}: {exc}"
    return None
