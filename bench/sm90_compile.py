"""Compile every kernel launch of the Triton path for an H100 (sm_90), without a GPU.

The interpreter does not check what only the GPU compiler does (``tl.dot`` block sizes, dtype
rules, layouts, register and shared-memory limits at ptxas time). This script runs the real
launchers on CPU tensors with ``JITFunction.run`` replaced by an ahead-of-time compile for
``GPUTarget("cuda", 90, 32)`` through Triton's NVIDIA backend (its bundled ptxas), specialized
as Triton's JIT would on the GPU (``perfmodel.compiling.compile_launch``, the hook
``bench/static_perf.py`` uses too): every (kernel, signature, constexprs) the forward and
backward launch is compiled once; nothing runs.

    python bench/sm90_compile.py fp32|bf16|fp16            exit 0 when everything compiled
    python bench/sm90_compile.py bf16 --report             + what the compiled code does
    python bench/sm90_compile.py bf16 --no-division        exit 1 when a kernel variant calls
                                                           a runtime division routine
The report reads the compiled code per kernel variant, as one should before tuning: registers
and spills (of the cubin Triton built, see ``cubin_usage``), shared memory, whether the dots
became Hopper ``wgmma`` (or Ampere ``mma.sync``), and how many global loads are vectorized
(``ld.global.v2/v4``). ``bench/static_perf.py`` reads the SASS further (main loop, issue bound,
a forecast).
Must run in a process without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the kernels must be compiled, not interpreted")

import torch  # noqa: E402
from perfmodel import sass  # noqa: E402
from perfmodel.compiling import compile_launch, compiled  # noqa: E402, F401
from triton.runtime.jit import JITFunction  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
    compile_launch(self, args, kwargs)


def main(dtype_name, filters=5, in_channels=3):
    """Compile the kernel variants of a few configurations with F = filters, C_in = in_channels
    (small odd defaults; the report is most telling at real sizes, e.g. F=64, C_in=1 or 64)."""
    F, c_in = filters, in_channels
    JITFunction.run = compile_instead_of_launch
    from convlstm_triton import functional, launchers

    functional.triton_interpreter_enabled = lambda: True  # CPU tensors may take the Triton path
    dtype = DTYPES[dtype_name]
    cases = [
        dict(rank=2, k=3, padding="same", mask=True, state=True, go_backwards=True,
             peephole=True),
        # time chunks of 2 steps: backward writes each chunk's frames of dx in place
        dict(rank=1, k=4, padding="valid", strides=2, bias=False, activation="gelu",
             recurrent_activation="hard_sigmoid", dropout=True, time_chunk=2),
        dict(rank=2, k=3, padding="same", strides=2, state=True, dropout=True,
             forward_variant="fused_input"),
        dict(rank=3, k=3, padding="same", forward_variant="unfused"),
    ]
    for case in cases:
        rank, k = case["rank"], case["k"]
        x = torch.randn(2, 3, *(9,) * rank, c_in, dtype=dtype, requires_grad=True)
        kernel = torch.randn(*(k,) * rank, c_in, 4 * F, dtype=dtype, requires_grad=True)
        rkernel = torch.randn(*(k,) * rank, F, 4 * F, dtype=dtype, requires_grad=True)
        bias = (torch.randn(4 * F, dtype=dtype, requires_grad=True) if case.get("bias", True)
                else None)
        options = {key: case[key] for key in ("padding", "strides", "go_backwards", "activation",
                                              "recurrent_activation", "forward_variant")
                   if key in case}
        state = None
        out_size = (9 - k) // case.get("strides", 1) + 1 if case["padding"] == "valid" else (
            -(-9 // case.get("strides", 1)))
        if case.get("state"):
            state = tuple(torch.randn(2, *(out_size,) * rank, F, dtype=dtype, requires_grad=True)
                          for _ in range(2))
        mask = torch.ones(2, 3, dtype=torch.bool) if case.get("mask") else None
        if case.get("peephole"):
            options["peephole"] = torch.randn(3, F, dtype=dtype, requires_grad=True)
        if case.get("dropout"):
            options["input_dropout_mask"] = torch.ones(4, *x.shape[:1], *x.shape[2:], dtype=dtype)
            options["recurrent_dropout_mask"] = torch.ones(4, 2, *(out_size,) * rank, F,
                                                           dtype=dtype)
        saved_rows = launchers.TIME_CHUNK_MIN_ROWS
        if case.get("time_chunk"):
            launchers.TIME_CHUNK_MIN_ROWS = 2 * out_size ** rank * (case["time_chunk"] - 1) + 1
        try:
            seq, h, c = functional.conv_lstm(x, kernel, rkernel, bias, state, mask=mask,
                                             backend="triton", **options)
            (seq.float().sum() + h.float().sum() + c.float().sum()).backward()
        finally:
            launchers.TIME_CHUNK_MIN_ROWS = saved_rows
        with torch.no_grad():
            functional.conv_lstm(x, kernel, rkernel, bias, state, mask=mask, backend="triton",
                                 **options)
    pre = torch.randn(40, 4 * F, dtype=dtype)
    h, c = launchers.cell_forward(pre, torch.randn(40, F), 1, 2)
    launchers.cell_backward(h, c, pre, c, c, 1, 2)
    shared = {}
    for key, (kernel, _) in compiled.items():
        shared[key[0]] = max(shared.get(key[0], 0), kernel.metadata.shared)
    print(f"sm_90 {dtype_name}: compiled {len(compiled)} kernel variants of {len(shared)} kernels;"
          " max shared memory per kernel: "
          + ", ".join(f"{name} {nbytes // 1024} KiB" for name, nbytes in sorted(shared.items())))


def cubin_usage(kernels):
    """[(registers, spill stores + loads in bytes)] of the cubins Triton built: registers from
    ``cuobjdump -res-usage``, spills as the bytes of the STL/LDL instructions (what ``ptxas -v``
    reports for that cubin). A second ptxas run on the PTX is not the same compile: Triton's
    ptxas flags differ by version, and with other flags the registers and spills do too."""
    code = sass.disassemble([kernel.asm["cubin"] for kernel in kernels])
    return [(sass.resource_usage(kernel.asm["cubin"])["regs"], sass.spill_bytes(instrs))
            for kernel, instrs in zip(kernels, code)]


def runtime_divisions():
    """[(kernel name, flags, what)] of the compiled variants that call a runtime routine:
    64-bit integer division or remainder (``perfmodel.sass.runtime_division``)."""
    rows = sorted(compiled.items(), key=lambda item: item[0][0])
    code = sass.disassemble([kernel.asm["cubin"] for _, (kernel, _) in rows])
    found = []
    for (key, (kernel, flags)), instrs in zip(rows, code):
        what = sass.runtime_division(kernel.asm["ptx"], instrs)
        if what:
            found.append((key[0], flags, what))
    return found


def report():
    """One line per compiled kernel variant: what the compiled code does."""
    print("| kernel | flags | warps | regs | spill B | smem KiB | wgmma | mma.sync | "
          "cp.async | ld.global vector/all |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = sorted(compiled.items(), key=lambda item: item[0][0])
    usage = cubin_usage([kernel for _, (kernel, _) in rows])
    for (key, (kernel, flags)), (regs, spills) in zip(rows, usage):
        ptx = kernel.asm["ptx"]
        vector = len(re.findall(r"ld\.global\S*\.v[248]\.", ptx))
        loads = len(re.findall(r"ld\.global", ptx))
        async_copies = len(re.findall(r"cp\.async\.c[ag]\.shared\.global", ptx))
        print(f"| {key[0]} | {' '.join(f.lower() for f in flags) or '-'} | "
              f"{dict(key[3])['num_warps']} | {regs} | {spills} | "
              f"{kernel.metadata.shared // 1024} | {'yes' if 'wgmma' in ptx else 'no'} | "
              f"{'yes' if 'mma.sync' in ptx else 'no'} | {async_copies} | {vector}/{loads} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dtype", choices=sorted(DTYPES))
    parser.add_argument("--report", action="store_true",
                        help="print registers, spills, shared memory, MMA kind, vector loads")
    parser.add_argument("--filters", type=int, default=5, help="F (default 5)")
    parser.add_argument("--in-channels", type=int, default=3, help="C_in (default 3)")
    parser.add_argument("--no-division", action="store_true",
                        help="exit 1 when a kernel variant calls a runtime division routine")
    cli = parser.parse_args()
    main(cli.dtype, cli.filters, cli.in_channels)
    if cli.report:
        report()
    if cli.no_division:
        dividing = runtime_divisions()
        for name, flags, what in dividing:
            print(f"runtime division: {name} [{' '.join(flags) or '-'}]: {', '.join(what)}")
        if dividing:
            sys.exit(1)
        print(f"sm_90 {cli.dtype}: no runtime division in {len(compiled)} kernel variants")
