"""Seeded uniform random numbers as pure tensor arithmetic: a hash of (seed, stream, draw,
element index). No ``torch.Generator``, so a seeded layer compiles with
``torch.compile(fullgraph=True)`` (dynamo cannot create a generator inside a graph), and the
numbers are the same on every device and in every process for the same (seed, stream, draw).

The hash is the integer mixer ``x = ((x >> 16) ^ x) * 0x45d9f3b`` applied twice, then
``(x >> 16) ^ x``, on 32-bit values held in int64 (no product exceeds 2**59, so nothing
overflows); 32-bit words of the index, the seed and the draw are chained through it.
"""

import torch

_MASK = 0xFFFFFFFF
_MIX = 0x45D9F3B


def _mix(x):
    """The mixer on int64 tensors (or Python ints) holding values in [0, 2**32)."""
    x = (((x >> 16) ^ x) * _MIX) & _MASK
    x = (((x >> 16) ^ x) * _MIX) & _MASK
    return ((x >> 16) ^ x) & _MASK


def uniform(shape, seed, stream, draw, device):
    """A float32 tensor of ``shape`` with values in [0, 1) on ``device``. ``seed``: an int;
    ``stream``: an int telling apart the draws of one call (0, 1, ...); ``draw``: a 0-d int64
    tensor (a call counter kept on the module) or an int."""
    key = _mix(_mix((int(seed) & _MASK) ^ 0x9E3779B9) ^ (int(stream) & _MASK))
    draw = torch.as_tensor(draw, dtype=torch.int64, device=device)
    key = _mix(_mix(key ^ (draw & _MASK)) ^ ((draw >> 32) & _MASK))
    numel = 1
    for n in shape:
        numel *= n
    index = torch.arange(numel, dtype=torch.int64, device=device)
    bits = _mix((index & _MASK) ^ _mix(key ^ (index >> 32)))
    return (bits.to(torch.float32) * (1.0 / 4294967296.0)).reshape(shape).clamp_(max=0.99999994)
