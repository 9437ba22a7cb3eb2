"""Triton kernels of convlstm-triton (installed as ``convlstm_triton.kernels``).

Only ``@triton.jit`` kernels, their ``@triton.jit`` helpers and their block configs live here;
launchers (allocation, grids, strides) live in ``convlstm_triton/``.
"""
