"""Launchers: allocate outputs, compute grids and strides, and call the Triton kernels.

No autograd here (see ``autograd.py``). Every tensor handed to a kernel is channels-last with the
spatial dims padded to the kernels' (D, H, W) view; (B, T) tensors may be strided views whose
frames are contiguous.
"""

from dataclasses import dataclass

import torch
import triton

from . import amd_configs, launch_plans, tuning
from .geometry import ConvGeometry
from .kernels import cell as cell_kernels
from .kernels import input_grad as input_grad_kernels
from .kernels import input_projection as input_projection_kernels
from .kernels import step_backward as step_backward_kernels
from .kernels import step_forward as step_forward_kernels
from .kernels import weight_grad as weight_grad_kernels
from .platform import HOPPER, platform

_kernel_geometries = {}  # id(ConvGeometry) -> (it, its KernelGeometry)


@dataclass(frozen=True)
class KernelGeometry:
    """A ConvGeometry in the kernels' rank-generic (D, H, W) view."""

    in_spatial: tuple
    out_spatial: tuple
    kernel_size: tuple
    strides: tuple
    pads: tuple
    dilation: tuple
    recurrent_pads: tuple

    @staticmethod
    def from_conv(geometry: ConvGeometry):
        # one per ConvGeometry object (``ConvGeometry.build`` makes one per distinct arguments);
        # not while torch.compile traces (id() of a traced object is not the object's)
        if torch.compiler.is_compiling():
            return KernelGeometry._from_conv(geometry)
        cached = _kernel_geometries.get(id(geometry))
        if cached is not None and cached[0] is geometry:
            return cached[1]
        kernel_geometry = KernelGeometry._from_conv(geometry)
        if len(_kernel_geometries) < 4096:
            _kernel_geometries[id(geometry)] = (geometry, kernel_geometry)
        return kernel_geometry

    @staticmethod
    def _from_conv(geometry: ConvGeometry):
        return KernelGeometry(
            in_spatial=geometry.padded3d(geometry.in_spatial, 1),
            out_spatial=geometry.padded3d(geometry.out_spatial, 1),
            kernel_size=geometry.padded3d(geometry.kernel_size, 1),
            strides=geometry.padded3d(geometry.strides, 1),
            pads=geometry.padded3d(geometry.pad_before, 0),
            dilation=geometry.padded3d(geometry.dilation, 1),
            recurrent_pads=geometry.padded3d(geometry.recurrent_pad_before, 0),
        )

    @property
    def in_pixels(self):
        return self.in_spatial[0] * self.in_spatial[1] * self.in_spatial[2]

    @property
    def out_pixels(self):
        return self.out_spatial[0] * self.out_spatial[1] * self.out_spatial[2]

    def input_conv_constexprs(self):
        kd, kh, kw = self.kernel_size
        sd, sh, sw = self.strides
        pd, ph, pw = self.pads
        ld, lh, lw = self.dilation
        return dict(KD=kd, KH=kh, KW=kw, SD=sd, SH=sh, SW=sw, PD=pd, PH=ph, PW=pw,
                    LD=ld, LH=lh, LW=lw)

    def recurrent_conv_constexprs(self):
        """The recurrent conv: stride 1, "same", no dilation, on the state's spatial shape."""
        kd, kh, kw = self.kernel_size
        pd, ph, pw = self.recurrent_pads
        return dict(KD=kd, KH=kh, KW=kw, SD=1, SH=1, SW=1, PD=pd, PH=ph, PW=pw,
                    LD=1, LH=1, LW=1)

    def recurrent_as_conv(self):
        """The recurrent conv as a geometry of its own (for the weight-gradient kernel)."""
        return KernelGeometry(self.out_spatial, self.out_spatial, self.kernel_size, (1, 1, 1),
                              self.recurrent_pads, (1, 1, 1), self.recurrent_pads)


# K layout of the implicit GEMMs: tap-major (per-row index math, loads contiguous along channels)
# from this many channels on; below it the flattened (tap, channel) K fills the tl.dot lanes
# that a tap-major tile would leave empty (C_in = 1 would use 1 of 16). Tests lower it to 1 to
# run every shape through both layouts.
TAP_MAJOR_MIN_CHANNELS = 16


def tap_major(channels):
    return channels >= TAP_MAJOR_MIN_CHANNELS


def rows_aligned(channels, block_k, *strides):
    """The channel count is a multiple of BLOCK_K (so tap-major K tiles never straddle a pixel
    and need no channel mask) and the strides are multiples of 16 elements (rows start
    16-element aligned): the gathers may then load channel runs with vector instructions."""
    return channels % block_k == 0 and all(v % 16 == 0 for v in strides)


# Host arithmetic in plain Python: triton.cdiv / triton.next_power_of_2 are constexpr functions
# whose wrapper costs 2-3 µs a call in Triton 3.6, and a launch made dozens of such calls.
def cdiv(a, b):
    return -(-a // b)


def next_power_of_2(n):
    return 1 << (n - 1).bit_length() if n > 1 else 1


def new_buffer(shape, device, dtype):
    """Every kernel output is allocated here (uninitialized); tests poison it with NaN."""
    return torch.empty(shape, device=device, dtype=dtype)


def _scratch_like(t):
    """A trial's private copy of a tensor a kernel writes (or reads and rewrites)."""
    return None if t is None else t.clone(memory_format=torch.preserve_format)


def _dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


def _prune(configs, **limits):
    """Drop configs whose block along a dim exceeds that dim's next power of two (the tile
    would be mostly masked); keep at least the default. Cached per (configs, limits): a
    launcher asks the same at every step."""
    key = (tuple(map(id, configs)), tuple(limits.items()))
    entry = _pruned.get(key)
    if entry is None:
        entry = _pruned[key] = (tuple(configs), [
            cfg for cfg in configs
            if all(cfg[block] <= max(16, next_power_of_2(size))
                   for block, size in limits.items())] or configs[:1])
        launch_plans.drop_oldest(_pruned, PRUNED_KEPT)
    return entry[1]


# (ids of the config dicts, limits) -> (the dicts, kept): holding the dicts keeps their ids
# theirs (usually the kernels' module-level CONFIGS, alive anyway); at most PRUNED_KEPT (the
# limits are sizes: every distinct problem size adds one)
_pruned = {}
PRUNED_KEPT = 4096


def _tuned_launch(name, key, configs, launch, outputs, device, flop=None, warm_l2=False):
    """Launch with the config ``tuning.pick_config`` chose for ``key``: trials (first call on a
    GPU only) write private copies of ``outputs``, made once per config outside the timed
    calls, so that in-place kernels do not accumulate into the caller's tensors, the caller's
    tensors see exactly one launch, and a trial times the kernel, not a copy. ``warm_l2``: time
    trials back to back without flushing L2 (a step kernel reads what the previous step wrote)."""
    # AMD only: the HIP backend's MFMA options as extra candidates (NVIDIA's lists unchanged)
    configs = amd_configs.with_amd_variants(name, configs, platform(device))
    scratch = {}

    def run(cfg):
        copies = scratch.get(id(cfg))
        if copies is None:
            copies = scratch[id(cfg)] = [_scratch_like(t) for t in outputs]
        launch(cfg, *copies)

    # a traced launch (``launch_plans.traceable``) has no real tensors to time configs on
    cfg = tuning.pick_config(name, key, configs, run, device, flop=flop, warm_l2=warm_l2,
                             measure=not launch_plans.traceable())
    scratch.clear()
    return launch(cfg, *outputs)


def dot_precision(dtype, allow_tf32):
    """fp32 dots use TF32 when allowed (PyTorch's conv default), IEEE otherwise."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


# Every launch passes enable_fp_fusion explicitly (FMA contraction, Triton's default up to 3.9,
# which announces that the default flips in 3.10): results do not change with the Triton
# version, and users see no warning.
FP_FUSION = True


class GateWeights:
    """A conv weight as a (K, 4F) matrix in Keras' gate-major column order (i, f, c, o blocks
    of F), and its gate-interleaved copies for the wide-MMA step kernel, made once per BLOCK_F
    and reused by every step of a sequence (see ``gate_interleaved``)."""

    def __init__(self, gate_major):
        self.gate_major = gate_major
        self._interleaved = {}

    @staticmethod
    def of(weights):
        return weights if isinstance(weights, GateWeights) else GateWeights(weights)

    def interleaved(self, block_f):
        w = self._interleaved.get(block_f)
        if w is None:
            w = self._interleaved[block_f] = gate_interleaved(self.gate_major, block_f)
        return w


def gate_interleaved(w, block_f):
    """(K, 4F) gate-major -> (K, 4 * F_pad), F_pad = F rounded up to block_f: column tile j of
    width 4 * block_f holds gates i, f, c, o of channels [j * block_f, (j + 1) * block_f), so a
    program's weight tile is one contiguous run and one dot computes its four gates; padded
    channels are zero."""
    K, N = w.shape
    F = N // 4
    tiles = cdiv(F, block_f)
    if F == tiles * block_f:  # no padding: one copy
        return w.reshape(K, 4, tiles, block_f).transpose(1, 2).reshape(K, N)
    padded = w.new_zeros((K, 4, tiles * block_f))
    padded[:, :, :F] = w.reshape(K, 4, F)
    return padded.reshape(K, 4, tiles, block_f).transpose(1, 2).reshape(K, 4 * tiles * block_f)


# Time chunks: the hoisted input projection (xg) and backward's gate gradients (dgates) live in
# buffers of Tc steps, not of the whole sequence, with Tc the fewest steps whose B·Tc·P rows
# reach this many: GEMMs of several waves on 132 SMs, buffers a fraction of the sequence's
# (mnist_l2, nowcast: Tc = 1 of 19, 16 steps; small: 8 of 10). Tests set Tc to run chunk
# boundaries on tiny shapes.
TIME_CHUNK_MIN_ROWS = 1 << 16


def settings():
    """The module settings that shape launches (tests move some): part of a launch plan's
    problem key (``autograd.problem_plans``)."""
    return (TIME_CHUNK_MIN_ROWS, TAP_MAJOR_MIN_CHANNELS, INPUT_GRAD_GEMM_MIN_CHANNELS,
            SPATIAL_TILE_WASTE, FP_FUSION)


def time_chunk(B, T, P):
    """Steps per time chunk of a (B, T, P, .) sequence."""
    return max(1, min(T, cdiv(TIME_CHUNK_MIN_ROWS, B * P)))


def chunk_buffer(buffer, steps):
    """The first ``steps`` steps of a (B, Tc, P, N) chunk buffer as a *contiguous*
    (B, steps, P, N) tensor (the kernels index it as B·steps·P rows): the front of its storage,
    not ``buffer[:, :steps]``."""
    B, length, P, N = buffer.shape
    if steps == length:
        return buffer
    return buffer.view(-1)[: B * steps * P * N].view(B, steps, P, N)


def input_projection(x, kernel2d, bias, xmask, geom: KernelGeometry, precision, *,
                     four_dots=False, out=None):
    """xg (see ``input_projection_launch``)."""
    return input_projection_launch(x, kernel2d, bias, xmask, geom, precision,
                                   four_dots=four_dots, out=out).args["out_ptr"]


def input_projection_launch(x, kernel2d, bias, xmask, geom: KernelGeometry, precision, *,
                            four_dots=False, out=None):
    """x (B, T, D, H, W, C_in) frames contiguous, samples at any stride (a time chunk of a
    sequence); kernel2d (K, 4F) gate-major (a tensor or GateWeights); xmask (4, B, D, H, W,
    C_in) input-dropout masks or None -> xg (B, T, Po, 4F), written into ``out`` (contiguous)
    when given. ``four_dots``: the first design (per-gate column tiles, flattened K), for
    comparisons. Returns the launch's Record (``launch_plans``): xg is its ``out_ptr``."""
    kernel2d = GateWeights.of(kernel2d).gate_major
    B, T = x.shape[:2]
    C = x.shape[-1]
    F = kernel2d.shape[1] // 4
    Po = geom.out_pixels
    M = B * T * Po
    xg = out if out is not None else new_buffer((B, T, Po, 4 * F), x.device, x.dtype)
    gate_tiles = xmask is not None or four_dots
    tensors = _projection_tensors(kernel2d, bias, xmask, xg)

    def launch(cfg, out):
        col_tiles = (4 * cdiv(F, cfg["BLOCK_N"]) if gate_tiles
                     else cdiv(4 * F, cfg["BLOCK_N"]))
        tile_h, tile_w, frame_tiles, spatial = spatial_tiling(geom.out_spatial, cfg["BLOCK_M"])
        grid = (B * T * frame_tiles if spatial else cdiv(M, cfg["BLOCK_M"]), col_tiles)
        return launch_plans.launch(input_projection_kernels.input_projection_kernel, grid, (
            x, x.stride(0), x.stride(1), T,
            tensors["w_ptr"], tensors["bias_ptr"], tensors["xmask_ptr"], _stride0(xmask),
            out, M, B * T, *geom.in_spatial, *geom.out_spatial, Po),
            F=F, C=C, **geom.input_conv_constexprs(),
            HAS_BIAS=bias is not None, HAS_DROPOUT=xmask is not None, GATE_TILES=gate_tiles,
            FRAMES_CONTIGUOUS=x.stride(0) == T * x.stride(1), SPATIAL_TILES=spatial,
            TILE_H=tile_h, TILE_W=tile_w,
            TAP_MAJOR=tap_major(C) and not four_dots, DOT_PRECISION=precision,
            enable_fp_fusion=FP_FUSION, **cfg,
        )

    key = (tuning.bucket(M), F, C, geom.kernel_size, geom.strides, geom.dilation,
           _dtype_name(x), precision, bias is not None, xmask is not None, four_dots)
    gpu = platform(x.device)
    configs = input_projection_configs(M, F if gate_tiles else 4 * F, kernel2d.shape[0],
                                       x.element_size(), gpu.shared_memory, gpu.register_stages)
    return _tuned_launch("input_projection", key, configs, launch, [xg], x.device,
                         flop=2.0 * M * 4 * F * kernel2d.shape[0])


def input_projection_configs(M, columns, k_total, element_size=2,
                             shared_memory=HOPPER.shared_memory, register_stages=0):
    """The input projection's candidate configs for a problem of M rows and ``columns`` columns
    per program's reach (4F, or F with per-gate tiles): pipelines that fit ``shared_memory``
    bytes in this element size (``pipeline_fits``), blocks no larger than the problem."""
    return _prune(_fitting_configs(input_projection_kernels.CONFIGS, element_size,
                                   lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_N"]), shared_memory,
                                   register_stages),
                  BLOCK_M=M, BLOCK_N=columns, BLOCK_K=k_total)


def _projection_tensors(kernel2d, bias, xmask, out):
    """The input projection's tensor arguments but x (its launch, and its binder)."""
    d = dummy(kernel2d.device, kernel2d.dtype)
    return {"w_ptr": kernel2d, "bias_ptr": _ptr(bias, d), "xmask_ptr": _ptr(xmask, d),
            "out_ptr": out}


def input_projection_binder(kernel2d, bias, xmask, out):
    """A launch plan's binder (``launch_plans.Planned``) for input projections of a sequence's
    time chunks into ``out``: the x frames are its slot."""
    kernel2d = GateWeights.of(kernel2d).gate_major
    return lambda skeleton: _projection_tensors(kernel2d, bias, xmask, out)


def _ptr(t, dummy):
    """Optional tensors reach a kernel as a dummy pointer that its constexpr flags never read."""
    return t if t is not None else dummy


_dummies = {}  # (device, dtype) -> a tensor of 16 bytes


def dummy(device, dtype):
    """The pointer argument of absent optional tensors: one tensor per device and dtype for
    the process, so that a launch plan kept across calls (``launch_plans.problem_plans``) never
    holds a pointer to a freed tensor (the dtype: the one the absent tensor would have, so
    that the kernel compiles as it always did)."""
    if launch_plans.traceable():  # a tracer's tensors live in its graph, not in this cache
        return torch.empty(16, dtype=torch.uint8, device=device).view(dtype)
    t = _dummies.get((device, dtype))
    if t is None:
        t = _dummies[(device, dtype)] = torch.empty(16, dtype=torch.uint8, device=device).view(
            dtype)
    return t


def _stride0(t):
    return t.stride(0) if t is not None else 0


def step_forward(h_prev, c_prev, xg_t, rk2d, h_out, c_out, preact_t, mask_t, hmask, peephole,
                 geom: KernelGeometry, act, ract, precision, *, x_t=None, kernel2d=None,
                 bias=None, xmask=None, cell=True, four_dots=False, tma=False):
    """One step. State tensors are (B, P, F) views (sample stride free, rest contiguous);
    hmask (4, B, P, F) recurrent-dropout masks or None; preact_t (B, P, 4F) or None.
    rk2d, kernel2d: GateWeights (or gate-major (K, 4F) tensors, wrapped here; pass GateWeights
    made once per sequence so the gate-interleaved copies are made once, not every step).

    Input: xg_t (B, P, 4F), the hoisted projection; or, with x_t (B, D, H, W, C_in) (a time
    slice of x), the input conv runs inside the step ("fused input") with kernel2d, bias and
    xmask (4, B, D, H, W, C_in). cell=False stores only the pre-activations into preact_t
    (the unfused variant; ``cell_forward`` then applies the cell). four_dots: the first
    kernel design (four gate dots, a K loop per tap), kept for comparisons. h_out and c_out
    None (with cell): only the pre-activations are stored (backward's recomputation); preact_t
    may then be xg_t itself, overwritten in place. tma: the recurrent
    conv's tiles through tensor descriptors (TMA on Hopper) where ``tma_eligible``; otherwise
    the gather path.
    """
    B, P, F = h_prev.shape
    M = B * P
    rc = geom.recurrent_conv_constexprs()
    ic = geom.input_conv_constexprs()
    fused_input = x_t is not None
    c_in = x_t.shape[-1] if fused_input else 1
    rec_weights = GateWeights.of(rk2d)
    in_weights = GateWeights.of(kernel2d) if fused_input else None
    tma = (tma and not four_dots and platform(h_prev.device).tma
           and tma_eligible(h_prev, hmask))
    if tma:
        _ensure_allocator(h_prev.device)
    # the pointer of absent optional tensors (the same at every step and call: launch plans
    # replay it)
    d = dummy(h_prev.device, rec_weights.gate_major.dtype)

    def launch(cfg, h_out, c_out, preact_t):
        block_k, block_f = cfg["BLOCK_K"], cfg["BLOCK_F"]
        tile_h, tile_w, frame_tiles, spatial = spatial_tiling(geom.out_spatial, cfg["BLOCK_M"])
        spatial = spatial or tma
        w = _step_weights(block_f, four_dots, rec_weights, in_weights, bias, xmask, hmask,
                          peephole, d)
        m_tiles = B * frame_tiles if spatial else cdiv(M, cfg["BLOCK_M"])
        grid = (m_tiles, cdiv(F, block_f))
        return launch_plans.launch(step_forward_kernels.step_forward_kernel, grid, (
            h_prev, h_prev.stride(0), c_prev, c_prev.stride(0), _ptr(xg_t, d), _stride0(xg_t),
            w["r_ptr"], _ptr(x_t, d), _stride0(x_t), w["w_ptr"], w["bias_ptr"], w["xmask_ptr"],
            _stride0(xmask),
            _ptr(h_out, d), _stride0(h_out), _ptr(c_out, d), _stride0(c_out),
            _ptr(preact_t, d), _stride0(preact_t), _ptr(mask_t, d), _stride0(mask_t),
            w["hmask_ptr"], _stride0(hmask), w["peephole_ptr"],
            M, P, B, *geom.out_spatial, *geom.in_spatial), F=F, C_IN=c_in,
            KD=rc["KD"], KH=rc["KH"], KW=rc["KW"], PD=rc["PD"], PH=rc["PH"], PW=rc["PW"],
            SD=ic["SD"], SH=ic["SH"], SW=ic["SW"], IPD=ic["PD"], IPH=ic["PH"], IPW=ic["PW"],
            LD=ic["LD"], LH=ic["LH"], LW=ic["LW"],
            ACT=act, RACT=ract, FUSED_INPUT=fused_input, HAS_BIAS=bias is not None,
            REC_TAP_MAJOR=tap_major(F), IN_TAP_MAJOR=fused_input and tap_major(c_in),
            # only the four-dots design reads these (the wide one's channel counts are
            # constexpr): elsewhere they would only compile identical kernels twice
            REC_ALIGNED=four_dots and rows_aligned(F, block_k, h_prev.stride(0)),
            IN_ALIGNED=four_dots and fused_input and rows_aligned(c_in, block_k, x_t.stride(0)),
            HAS_XDROP=xmask is not None, CELL=cell, STORE_STATE=cell and h_out is not None,
            HAS_MASK=mask_t is not None,
            HAS_RDROP=hmask is not None, HAS_PEEPHOLE=peephole is not None,
            SAVE_PREACT=preact_t is not None, DOT_PRECISION=precision, FOUR_DOTS=four_dots,
            TMA=tma, SPATIAL_TILES=spatial, TILE_H=tile_h, TILE_W=tile_w,
            enable_fp_fusion=FP_FUSION, **cfg,
        )

    key = (tuning.bucket(M), F, c_in, geom.kernel_size, geom.strides, geom.dilation,
           _dtype_name(h_prev), precision, act, ract, fused_input, cell, bias is not None,
           xmask is not None, mask_t is not None, hmask is not None, peephole is not None,
           four_dots, tma)
    k_total = rec_weights.gate_major.shape[0] + (
        in_weights.gate_major.shape[0] if fused_input else 0)
    gpu = platform(h_prev.device)
    configs = step_forward_configs(F, M, k_total, four_dots, fused_input,
                                   h_prev.element_size(), gpu.shared_memory, gpu.register_stages)
    # The key leaves out whether h and c are stored and whether the pre-activations are:
    # backward's recomputation (h_out, c_out None) runs forward's config, so its
    # pre-activations are bit-identical to the saved ones, and a forward without autograd
    # (nothing saved) gives the training forward's bits.
    return _tuned_launch("step_forward", key, configs, launch, [h_out, c_out, preact_t],
                         h_prev.device, flop=2.0 * M * 4 * F * k_total, warm_l2=True)


def _step_weights(block_f, four_dots, rec_weights, in_weights, bias, xmask, hmask, peephole,
                  d):
    """The step kernel's tensor arguments that are the same at every step of a sequence (its
    launch, and its binder); ``in_weights`` None: no fused input conv (no bias, xmask)."""
    r_w = rec_weights.gate_major if four_dots else rec_weights.interleaved(block_f)
    in_w = None
    if in_weights is not None:
        in_w = in_weights.gate_major if four_dots else in_weights.interleaved(block_f)
    return {"r_ptr": r_w, "w_ptr": _ptr(in_w, d), "bias_ptr": _ptr(bias, d),
            "xmask_ptr": _ptr(xmask, d), "hmask_ptr": _ptr(hmask, d),
            "peephole_ptr": _ptr(peephole, d)}


def step_forward_binder(rk2d, hmask, peephole, kernel2d=None, bias=None, xmask=None):
    """A launch plan's binder (``launch_plans.Planned``) for a sequence's ``step_forward``
    launches: the per-step pointers are its slots. ``kernel2d``, ``bias``, ``xmask``: the
    fused input conv's, bound only where the recorded launch fused it (``FUSED_INPUT``)."""
    rec_weights = GateWeights.of(rk2d)
    in_weights = GateWeights.of(kernel2d) if kernel2d is not None else None
    device = rec_weights.gate_major.device

    def bind(skeleton):
        c = skeleton.constants
        if c["TMA"]:
            _ensure_allocator(device)
        fused = c["FUSED_INPUT"]
        return _step_weights(c["BLOCK_F"], c["FOUR_DOTS"], rec_weights,
                             in_weights if fused else None, bias if fused else None,
                             xmask if fused else None, hmask, peephole,
                             dummy(device, rec_weights.gate_major.dtype))

    return bind


# Spatial M tiles (a TILE_H x TILE_W block of one frame per program: row coordinates by
# constant shifts, the frame by a few scalar divisions) unless they would waste more than this
# fraction of the rows on partial tiles; otherwise rows run over the flattened pixels (a
# runtime division per row).
SPATIAL_TILE_WASTE = 0.125


def spatial_tiling(spatial, block_m):
    """(tile_h, tile_w, tiles per frame, worth it) of BLOCK_M-row spatial tiles over a
    (D, H, W) frame: rows of TILE_W = min(next_pow2(W), BLOCK_M) pixels, TILE_H of them."""
    D, H, W = spatial
    tile_w = min(next_power_of_2(W), block_m)
    tile_h = block_m // tile_w
    tiles = D * cdiv(H, tile_h) * cdiv(W, tile_w)
    return tile_h, tile_w, tiles, tiles * block_m <= (1 + SPATIAL_TILE_WASTE) * D * H * W


def tma_eligible(h_prev, hmask):
    """Tensor descriptors need 16-byte aligned base and row strides (F * element size and the
    sample stride multiples of 16 bytes); per-gate recurrent dropout masks need the gather."""
    size = h_prev.element_size()
    if launch_plans.traceable():  # a traced tensor has no address (and Inductor no descriptors)
        return False
    return (hmask is None and h_prev.data_ptr() % 16 == 0
            and all(s * size % 16 == 0 for s in h_prev.stride()[:-1]))


def _ensure_allocator(device):
    """Device-side tensor descriptors need a global scratch allocator (also under the
    interpreter). Set one unless the caller has: torch memory on the current CUDA device at
    launch time (the CPU under the interpreter). The setting is a ContextVar, so a backward
    thread needs its own: checked at every TMA launch."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        on_cuda = device.type == "cuda"
        triton.set_allocator(lambda size, alignment, stream: torch.empty(
            size, dtype=torch.int8, device="cuda" if on_cuda else "cpu"))


def step_forward_configs(F, M, k_total, four_dots=False, fused_input=False, element_size=2,
                         shared_memory=HOPPER.shared_memory, register_stages=0):
    """The step kernel's candidate configs for a problem. The wide-MMA design keeps
    BLOCK_F >= 32 once F >= 32: N = 4 * BLOCK_F >= 128 is where wgmma runs efficiently. With
    the input conv fused in (a second pipelined K loop), BLOCK_F = 64 reaches 255 registers
    and spills (sm_90, C_in = 64): not a candidate there. Pipelines that do not fit
    ``shared_memory`` bytes in this element size (``pipeline_fits``) are not candidates
    either."""
    configs = _fitting_configs(step_forward_kernels.CONFIGS, element_size,
                               lambda cfg: (cfg["BLOCK_M"], 4 * cfg["BLOCK_F"]), shared_memory,
                               register_stages)
    if not four_dots and F >= 32:
        # none of the wide tiles fits (fp32 in a small LDS): the narrow ones, rather than none
        configs = [cfg for cfg in configs if cfg["BLOCK_F"] >= 32] or configs
    if not four_dots and fused_input:
        configs = [cfg for cfg in configs if cfg["BLOCK_F"] <= 32] or configs
    return _prune(configs, BLOCK_M=M, BLOCK_F=F, BLOCK_K=k_total)


class DgradWeights:
    """The recurrent kernel R (taps * F, 4F), gate-major, and the B matrix of its data gradient
    (the step-backward kernel's dgrad conv), made once per sequence and reused by every step:
    Rt (taps * 4F, F), Rt[tap' * 4F + n, f] = R[(taps - 1 - tap') * F + f, n], the kernel
    flipped in every spatial dim (the flattened tap index reversed) and transposed, so that
    dh = conv(dg_next, Rt) with padding k - 1 - pad reads dg_next's 4F channels contiguously."""

    def __init__(self, gate_major):
        self.gate_major = gate_major
        K, N = gate_major.shape
        F = N // 4
        self.transposed = (gate_major.reshape(K // F, F, N).flip(0).transpose(1, 2)
                           .reshape(K // F * N, F).contiguous())

    @staticmethod
    def of(weights):
        return weights if isinstance(weights, DgradWeights) else DgradWeights(weights)


def step_backward_configs(F, M, k_loop, rdrop=False, element_size=2,
                          shared_memory=HOPPER.shared_memory, register_stages=0):
    """The step-backward kernel's candidate configs for a problem, in CONFIGS' order (widest
    first: the first left is the default). BLOCK_F >= 32 once F >= 32 (wgmma's N is BLOCK_F:
    narrower reads more shared memory per FLOP); with recurrent dropout (two accumulators and
    four K loops) BLOCK_F <= 32, where nothing spills; blocks no larger than the problem
    (k_loop: the K a BLOCK_K step runs over, the channels of one tap tap-major)."""
    configs = _fitting_configs(step_backward_kernels.CONFIGS, element_size,
                               lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_F"]), shared_memory,
                               register_stages)
    if F >= 32:
        # none of the wide tiles fits (fp32 in 64 KiB of AMD LDS: only BLOCK_F = 16 does): the
        # narrow ones, rather than no config at all
        configs = [cfg for cfg in configs if cfg["BLOCK_F"] >= 32] or configs
    if rdrop:
        configs = [cfg for cfg in configs if cfg["BLOCK_F"] <= 32] or configs
    return _prune(configs, BLOCK_M=M, BLOCK_F=F, BLOCK_K=k_loop)


def step_backward(dg_next, rk2d, dy, dh_carry, dc_carry, preact_t, c_t, c_prev, mask_t, hmask,
                  peephole, dg_out, geom: KernelGeometry, act, ract, precision, cell=True,
                  dh_live=True):
    """One fused backward step (cell=True), or the initial-state pass (cell=False: dh_carry
    becomes dh0 = dgrad(dg_next) + dh_carry). rk2d: DgradWeights (or the gate-major recurrent
    kernel (K, 4F), wrapped here; pass DgradWeights made once per sequence so that the flipped,
    transposed copy is made once, not every step). dh_live=False: the caller knows dh_carry
    holds zeros and reads no dh carry back from a cell step (no mask_t: each step leaves zeros),
    so the kernel neither reads it nor rewrites it (cell=False then writes dh0 = dgrad)."""
    if not dh_live and mask_t is not None:
        raise ValueError("step_backward: masked steps carry dh over; dh_live must be True")
    B, P, F = dh_carry.shape
    M = B * P
    weights = DgradWeights.of(rk2d)
    rc = geom.recurrent_conv_constexprs()
    # the dgrad conv's padding before: the forward's "after" (k - 1 - before), per dim
    dgrad_pads = [k - 1 - pad for k, pad in zip(geom.kernel_size, geom.recurrent_pads)]
    # K step channels: all 4F gate channels at once, or one gate's F with per-gate masks
    k_channels = F if hmask is not None else 4 * F
    # a dh carry the kernel never touches is not passed (its pointer argument is a dummy)
    dh_touched = dh_live or not cell

    d = dummy(dh_carry.device, torch.float32)  # the pointer of absent optional tensors

    def launch(cfg, dh_carry, dc_carry, dg_out):
        tile_h, tile_w, frame_tiles, spatial = spatial_tiling(geom.out_spatial, cfg["BLOCK_M"])
        m_tiles = B * frame_tiles if spatial else cdiv(M, cfg["BLOCK_M"])
        grid = (m_tiles, cdiv(F, cfg["BLOCK_F"]))
        w = _step_backward_tensors(weights, dh_carry, dc_carry, hmask, peephole, dh_touched, d)
        return launch_plans.launch(step_backward_kernels.step_backward_kernel, grid, (
            _ptr(dg_next, d), _stride0(dg_next), w["rt_ptr"], _ptr(dy, d), _stride0(dy),
            w["dh_ptr"], w["dc_ptr"], _ptr(preact_t, d), _stride0(preact_t),
            _ptr(c_t, d), _stride0(c_t), _ptr(c_prev, d), _stride0(c_prev), _ptr(mask_t, d),
            _stride0(mask_t), w["hmask_ptr"], _stride0(hmask), w["peephole_ptr"],
            _ptr(dg_out, d), _stride0(dg_out), M, P, B, *geom.out_spatial), F=F,
            KD=rc["KD"], KH=rc["KH"], KW=rc["KW"],
            PD=dgrad_pads[0], PH=dgrad_pads[1], PW=dgrad_pads[2],
            ACT=act, RACT=ract, HAS_NEXT=dg_next is not None, HAS_DY=dy is not None,
            HAS_DH=dh_live, HAS_MASK=mask_t is not None, HAS_RDROP=hmask is not None,
            HAS_PEEPHOLE=peephole is not None, CELL=cell, TAP_MAJOR=tap_major(k_channels),
            DOT_PRECISION=precision, SPATIAL_TILES=spatial, TILE_H=tile_h, TILE_W=tile_w,
            enable_fp_fusion=FP_FUSION, **cfg,
        )

    k_rows = weights.gate_major.shape[0]
    key = (tuning.bucket(M), F, geom.kernel_size, _dtype_name(weights.gate_major), precision,
           act, ract, dg_next is not None, dy is not None, mask_t is not None,
           hmask is not None, peephole is not None, cell, dh_live)
    gpu = platform(dh_carry.device)
    configs = step_backward_configs(
        F, M, k_channels if tap_major(k_channels) else k_rows // F * k_channels,
        rdrop=hmask is not None, element_size=weights.gate_major.element_size(),
        shared_memory=gpu.shared_memory, register_stages=gpu.register_stages)
    return _tuned_launch("step_backward", key, configs, launch, [dh_carry, dc_carry, dg_out],
                  dh_carry.device, flop=2.0 * M * F * k_rows * 4, warm_l2=True)


def _step_backward_tensors(weights, dh_carry, dc_carry, hmask, peephole, dh_touched, d):
    """The step-backward kernel's tensor arguments that are the same at every step of a
    sequence (its launch, and its binder)."""
    return {"rt_ptr": weights.transposed, "dh_ptr": dh_carry if dh_touched else d,
            "dc_ptr": dc_carry, "hmask_ptr": _ptr(hmask, d), "peephole_ptr": _ptr(peephole, d)}


def step_backward_binder(rk2d, dh_carry, dc_carry, hmask, peephole):
    """A launch plan's binder (``launch_plans.Planned``) for a sequence's ``step_backward``
    launches (with cell): the per-step pointers are its slots."""
    weights = DgradWeights.of(rk2d)
    d = dummy(dh_carry.device, torch.float32)

    def bind(skeleton):
        c = skeleton.constants
        return _step_backward_tensors(weights, dh_carry, dc_carry, hmask, peephole,
                                      c["HAS_DH"] or not c["CELL"], d)

    return bind


def _sm_count(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def weight_grad_split(tiles, row_tiles, sm_count, block_r):
    """How many splits of the reduction (contiguous ranges of row tiles) for ``tiles`` (K x
    column) output tiles: the count whose busiest SM has the least to do, the last wave
    included (the busiest SM runs ceil(programs / SMs) programs whatever the occupancy:
    co-resident CTAs share its tensor cores; 9 tiles x 29 splits = 261 programs fill 132 SMs
    twice). A program costs its row tiles plus a fixed overhead in row tiles: its prologue and
    epilogue, and mostly its fp32 partial tile, written and summed once more at an SM's share
    of HBM bandwidth (~30 GB/s), about as long as 768 / BLOCK_R row tiles take on the tensor
    cores: small launches (a time chunk of frames) get fewer splits. Ties go to fewer splits.
    Returns (splits, row tiles per split)."""
    if row_tiles == 0:  # nothing to reduce: one split that writes zeros
        return 1, 0
    overhead = 2 + 768 // block_r
    best = None
    for want in range(1, min(row_tiles, max(1, cdiv(8 * sm_count, tiles))) + 1):
        per_split = cdiv(row_tiles, want)
        split = cdiv(row_tiles, per_split)
        busiest = cdiv(tiles * split, sm_count) * (per_split + overhead)
        if best is None or busiest < best[0]:
            best = (busiest, split, per_split)
    return best[1], best[2]


def weight_grad(src, dgates, smask, geom: KernelGeometry, with_bias, precision):
    """Weight gradient (K, 4F) fp32 (and bias gradient (4F,) fp32 or None) of a conv.

    src (B, T', D, H, W, C) and dgates (B, T', Po, 4F) may be strided (B, T') views (frames
    contiguous); smask (4, B, D, H, W, C) dropout masks on src, or None (then column tiles may
    span gates: up to all 4F columns per program).
    """
    return weight_grad_sums(weight_grad_launch(src, dgates, smask, geom, with_bias, precision))


def weight_grad_sums(record):
    """(dW, db or None) from a weight-gradient launch's partials: fixed-order sums
    (bit-identical run to run)."""
    dw, db = record.args["dw_ptr"], record.args["db_ptr"]
    total = dw.sum(0)
    if record.args["BIAS_ROW"]:  # separate tensors: autograd's outputs may not alias each other
        return total[:-1], total[-1].clone()
    return total, (db.sum((0, 1)) if record.args["BIAS_SUMS"] else None)


def weight_grad_launch(src, dgates, smask, geom: KernelGeometry, with_bias, precision,
                       into=None):
    """The weight-gradient kernel's launch (``weight_grad``): returns its Record, whose dw_ptr
    (and db_ptr) hold the split's fp32 partials. ``into``: the Record of an earlier launch of
    the same weight (the previous time chunk) whose partials this one adds to, where the config
    chosen here has their layout (otherwise it writes partials of its own: the caller sums
    every Record whose buffers differ)."""
    B, T = dgates.shape[:2]
    C = src.shape[-1]
    F = dgates.shape[-1] // 4
    Do, Ho, Wo = geom.out_spatial
    Po = geom.out_pixels
    taps = geom.kernel_size[0] * geom.kernel_size[1] * geom.kernel_size[2]
    K = taps * C
    R = B * T * Po
    gate_tiles = smask is not None
    k_tap_major = tap_major(C)

    def launch(cfg, into_dw=None, into_db=None):
        block_r, block_k, block_n = cfg["BLOCK_R"], cfg["BLOCK_K"], cfg["BLOCK_N"]
        tile_h, tile_w, tiles_per_frame, spatial = spatial_tiling(geom.out_spatial, block_r)
        if not spatial:
            tile_h, tile_w, tiles_per_frame = 1, block_r, cdiv(Po, block_r)
        tiles_w = cdiv(Wo, tile_w)
        k_steps = taps * cdiv(C, block_k) if k_tap_major else cdiv(K, block_k)
        k_tiles = cdiv(k_steps, cfg["K_BLOCKS"])
        col_tiles = (4 * cdiv(F, block_n) if gate_tiles
                     else cdiv(4 * F, block_n))
        row_tiles = B * T * tiles_per_frame
        split, tiles_per_split = weight_grad_split(k_tiles * col_tiles, row_tiles,
                                                   _sm_count(src.device), block_r)
        # the bias: row K of the MMA where the flattened K leaves a padding lane for a column
        # of ones (free), else column sums of dgates tiles shared by the K tiles' programs
        bias_row = with_bias and not k_tap_major and K % block_k != 0
        bias_sums = with_bias and not bias_row
        accumulate = into_dw is not None and into_dw.shape[1] == K + bias_row and (
            not bias_sums or (into_db.shape[1] == k_tiles and into_db is not into_dw))
        if accumulate:  # the earlier launch's split, whatever this launch's rows
            dw, db = into_dw, (into_db if bias_sums else into_dw)
            split = dw.shape[0]
            tiles_per_split = cdiv(row_tiles, split)
        else:
            dw = new_buffer((split, K + bias_row, 4 * F), src.device, torch.float32)
            db = (new_buffer((split, k_tiles, 4 * F), src.device, torch.float32) if bias_sums
                  else dw)
        grid = (k_tiles, col_tiles, split)
        return launch_plans.launch(weight_grad_kernels.weight_grad_kernel, grid, (
            src, src.stride(0), src.stride(1), dgates, dgates.stride(0), dgates.stride(1),
            _ptr(smask, dummy(src.device, torch.float32)), _stride0(smask), dw, db,
            T, row_tiles, tiles_per_split, tiles_per_frame, tiles_w,
            tiles_w * cdiv(Ho, tile_h), *geom.in_spatial, Do, Ho, Wo, Po),
            C=C, F=F, **geom.input_conv_constexprs(), BIAS_SUMS=bias_sums, BIAS_ROW=bias_row,
            ACCUMULATE=accumulate, HAS_DROPOUT=smask is not None, GATE_TILES=gate_tiles,
            TAP_MAJOR=k_tap_major,
            SPATIAL_TILES=spatial, TILE_H=tile_h, TILE_W=tile_w, DOT_PRECISION=precision,
            enable_fp_fusion=FP_FUSION, **cfg,
        )

    key = (tuning.bucket(R), F, C, geom.kernel_size, geom.strides, geom.dilation,
           _dtype_name(dgates), precision, with_bias, smask is not None)
    gpu = platform(src.device)
    configs = weight_grad_configs(F, C, taps, gate_tiles, k_tap_major, src.element_size(),
                                  smask is not None, gpu.shared_memory, gpu.register_stages)
    # trials write their own partials (copies of ``into``'s): nothing of the caller's
    into = [] if into is None else [into.args["dw_ptr"], into.args["db_ptr"]]
    return _tuned_launch("weight_grad", key, configs, launch, into, src.device,
                         flop=2.0 * R * K * 4 * F)


def weight_grad_binder(smask, device, into=None):
    """A launch plan's binder (``launch_plans.Planned``) for a sequence's ``weight_grad_launch``
    of one weight: src and dgates frames are its slots; the partials are this call's: new ones
    (as the launch allocates them), or ``into``'s (a Record) where the plan adds to them."""
    d = dummy(device, torch.float32)

    def bind(skeleton):
        c, shapes = skeleton.constants, skeleton.shapes
        if c["ACCUMULATE"]:
            dw = into.args["dw_ptr"]
            db = into.args["db_ptr"] if c["BIAS_SUMS"] else dw
        else:
            dw = new_buffer(shapes["dw_ptr"][0], device, torch.float32)
            db = (new_buffer(shapes["db_ptr"][0], device, torch.float32) if c["BIAS_SUMS"]
                  else dw)
        return {"smask_ptr": _ptr(smask, d), "dw_ptr": dw, "db_ptr": db}

    return bind


def weight_grad_configs(F, C, taps, gate_tiles, k_tap_major, element_size, dropout,
                        shared_memory=HOPPER.shared_memory, register_stages=0):
    """The weight-gradient kernel's candidate configs: column tiles no wider than the columns
    a program can own (one gate's F with per-gate masks, all 4F otherwise), K blocks no taller
    than a tap's channels (tap-major) or all of K (but 64, wgmma's minimum), a second K block
    only where there is a second K step, pipelines whose shared memory fits a CTA (the stages
    of the A and dgates tiles but the ``register_stages`` held in registers on AMD, with
    dropout one more A buffer for the masked tile), and 32-row tiles only for the flattened K
    layout (its per-element gather of 64-row tiles reaches 255 registers and spills on sm_90)
    and for fp32 with dropout masks (the masked fp32 A tile of 64 rows spills at F = 128 with
    the bias sums on Triton 3.9)."""
    kept = []
    for cfg in weight_grad_kernels.CONFIGS:
        block_r, block_k, k_blocks = cfg["BLOCK_R"], cfg["BLOCK_K"], cfg["K_BLOCKS"]
        steps = taps * cdiv(C, block_k) if k_tap_major else cdiv(taps * C, block_k)
        smem = (_buffers(cfg, register_stages) * block_r * (k_blocks * block_k + cfg["BLOCK_N"])
                + (block_r * k_blocks * block_k if dropout else 0)) * element_size
        # registers: 32-row tiles for the flattened K layout and for fp32 with dropout
        small_tiles = not k_tap_major or (dropout and element_size == 4)
        if (k_blocks <= steps and smem <= shared_memory
                and (block_r == 32 or not small_tiles)):
            kept.append(cfg)
    n_limit = max(16, next_power_of_2(F if gate_tiles else 4 * F))
    k_limit = max(64, next_power_of_2(C if k_tap_major else taps * C))
    fit = [cfg for cfg in kept if cfg["BLOCK_N"] <= n_limit and cfg["BLOCK_K"] <= k_limit]
    # none fits: the narrowest of the usable ones (most of its columns masked, but right)
    return fit or sorted(kept or weight_grad_kernels.CONFIGS[:1],
                         key=lambda cfg: (cfg["BLOCK_N"], cfg["BLOCK_K"]))[:1]


def _fitting_configs(configs, element_size, tile_of, shared_memory, register_stages=0):
    """The configs whose pipeline fits (``pipeline_fits``) in this element size and shared
    memory, ``tile_of(cfg)`` giving its (block_m, block_n); one list per (configs, element size,
    shared memory, register stages) for the process, so that ``_prune``'s cache, keyed by the
    ids of the configs, sees the same list every call. ``configs``: a module-level list (its
    id is the key)."""
    key = (id(configs), element_size, shared_memory, register_stages)
    entry = _fitting.get(key)
    if entry is None:
        entry = _fitting[key] = (configs, [
            cfg for cfg in configs
            if pipeline_fits(cfg, *tile_of(cfg), element_size, shared_memory, register_stages)]
            or configs[:1])
    return entry[1]


# (id(configs), element size, shared memory, register stages) -> (configs, kept); a few entries
_fitting = {}


def _buffers(cfg, register_stages):
    """Shared-memory buffers of a config's pipeline: its stages but those the backend holds in
    registers (``platform.Platform.register_stages``), at least one."""
    return max(1, cfg["num_stages"] - register_stages)


def pipeline_fits(cfg, block_m, block_n, element_size, shared_memory=HOPPER.shared_memory,
                  register_stages=0):
    """Whether a GEMM config's pipeline, num_stages buffers of its A (block_m x BLOCK_K) and
    B (BLOCK_K x block_n) tiles (num_stages - register_stages on AMD's CDNA2/3, whose pipeliner
    holds one stage in registers), fits ``shared_memory`` bytes (a program's share on the GPU,
    ``platform.Platform``): the widest configs are for 16-bit operands on Hopper, and their
    fp32 (TF32) twins would be refused at launch."""
    tile_bytes = cfg["BLOCK_K"] * (block_m + block_n) * element_size
    return _buffers(cfg, register_stages) * tile_bytes <= shared_memory


# Input gradient: a tensor-core GEMM (N = C_in columns) from this many input channels on;
# below, a reduction on CUDA cores (the narrowest MMA has 16 columns, of which C_in = 1 would
# use one). Tests move it to run every shape through both kernels.
INPUT_GRAD_GEMM_MIN_CHANNELS = 16


def input_grad(dgates, kernel2d, xmask, geom: KernelGeometry, c_in, precision, out=None):
    """dgates (B, T, Po, 4F) contiguous, kernel2d (K, 4F) gate-major, xmask (4, B, D, H, W, C_in)
    or None -> dx (B, T, D, H, W, C_in). One launch of prod(strides) sub-pixel phases (grid
    axis 2), each a dense conv over its own taps (see kernels/input_grad.py). ``out``: dx's
    frames to write, contiguous frames at any sample stride (a time chunk of the sequence's
    dx), or None (a new dx)."""
    return input_grad_launch(dgates, kernel2d, xmask, geom, c_in, precision,
                             out=out).args["dx_ptr"]


def input_grad_launch(dgates, kernel2d, xmask, geom: KernelGeometry, c_in, precision, out=None):
    """``input_grad``'s launch: returns its Record, whose dx_ptr is dx."""
    assert dgates.is_contiguous()
    B, T, Po, N = dgates.shape
    F = N // 4
    if any(s > 1 and d > 1 for s, d in zip(geom.strides, geom.dilation)):
        # validation rejects it; the phases' tap lists (taps S apart) rely on it
        raise ValueError("input_grad: strides > 1 with dilation > 1 in one dim")
    # phase 0's input sub-grid (the largest): ceil(size / stride) per dim
    phase_grid = tuple(cdiv(n, s) for n, s in zip(geom.in_spatial, geom.strides))
    phases = geom.strides[0] * geom.strides[1] * geom.strides[2]
    rows = B * T * phase_grid[0] * phase_grid[1] * phase_grid[2]  # per phase
    taps = geom.kernel_size[0] * geom.kernel_size[1] * geom.kernel_size[2]
    gemm = c_in >= INPUT_GRAD_GEMM_MIN_CHANNELS
    weights = _input_grad_weights(kernel2d, gemm)
    dx_shape = (B, T, *geom.in_spatial, c_in)
    if out is None:
        dx = new_buffer(dx_shape, dgates.device, dgates.dtype)
    else:
        dx = out.view(dx_shape)
        assert _frames_contiguous(dx), "input_grad: out's frames must be contiguous"
    d = dummy(weights.device, weights.dtype)

    def launch(cfg, dx):
        tile_h, tile_w, frame_tiles, spatial = spatial_tiling(phase_grid, cfg["BLOCK_M"])
        m_tiles = B * T * frame_tiles if spatial else cdiv(rows, cfg["BLOCK_M"])
        if gemm:
            kernel = input_grad_kernels.input_grad_kernel
            grid = (m_tiles, cdiv(c_in, cfg["BLOCK_C"]), phases)
            extra = dict(DOT_PRECISION=precision)
        else:
            kernel = input_grad_kernels.input_grad_reduce_kernel
            grid = (m_tiles, c_in, phases)
            extra = {}
        return launch_plans.launch(kernel, grid, (
            dgates, weights, _ptr(xmask, d), _stride0(xmask), dx, dx.stride(0),
            T, B * T, *geom.in_spatial, *geom.out_spatial), C=c_in, F=F,
            **geom.input_conv_constexprs(), HAS_DROPOUT=xmask is not None,
            DX_CONTIGUOUS=B == 1 or dx.stride(0) == T * dx.stride(1),
            SPATIAL_TILES=spatial, TILE_H=tile_h, TILE_W=tile_w,
            enable_fp_fusion=FP_FUSION, **extra, **cfg,
        )

    key = (tuning.bucket(rows * phases), F, c_in, geom.kernel_size, geom.strides, geom.dilation,
           _dtype_name(dgates), precision, xmask is not None)
    # K blocks run over one gate's F channels with dropout masks, all 4F otherwise
    k_channels = F if xmask is not None else N
    if gemm:
        name = "input_grad"
        gpu = platform(dgates.device)
        configs = input_grad_configs(rows, c_in, k_channels, xmask is not None,
                                     dgates.element_size(), gpu.shared_memory,
                                     gpu.register_stages)
    else:
        name = "input_grad_reduce"
        configs = _prune(input_grad_kernels.REDUCE_CONFIGS, BLOCK_M=rows, BLOCK_K=k_channels)
    # useful FLOP: every (output pixel, tap) pair reaches one input pixel (or the padding)
    return _tuned_launch(name, key, configs, launch, [dx], dgates.device,
                         flop=2.0 * B * T * Po * taps * N * c_in)


def input_grad_configs(rows, c_in, k_channels, dropout=False, element_size=2,
                       shared_memory=HOPPER.shared_memory, register_stages=0):
    """The input-gradient GEMM's candidate configs: pipelines that fit ``shared_memory`` bytes
    (``pipeline_fits``: dgates' BLOCK_M x BLOCK_K and the weights' BLOCK_K x BLOCK_C tiles;
    fp32 in AMD's 64 KiB of LDS drops the four-stage one), with dropout masks (two accumulators
    live: the gate's partial sum and the total) at most 32 fp32 elements of each per thread, or
    the epilogue's mask tile spills; blocks no larger than the problem (``k_channels``: the K a
    BLOCK_K step runs over)."""
    configs = _fitting_configs(input_grad_kernels.CONFIGS, element_size,
                               lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_C"]), shared_memory,
                               register_stages)
    if dropout:
        configs = [cfg for cfg in configs
                   if cfg["BLOCK_M"] * cfg["BLOCK_C"] <= 32 * 32 * cfg["num_warps"]] or configs
    return _prune(configs, BLOCK_M=rows, BLOCK_C=c_in, BLOCK_K=k_channels)


def _frames_contiguous(t):
    """Whether each t[i] is contiguous (the samples of t at any stride)."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _input_grad_weights(kernel2d, gemm):
    # row-major (K, 4F); the reduction multiplies in fp32: its weight converted once per
    # launch (or per sequence, by the binder), not at every K step
    return (kernel2d if gemm else kernel2d.to(torch.float32)).contiguous()


def input_grad_binder(kernel2d, xmask):
    """A launch plan's binder (``launch_plans.Planned``) for a sequence's ``input_grad_launch``:
    the dgates and dx frames are its slots; this call's weights (converted once)."""
    converted = {}

    def bind(skeleton):
        gemm = skeleton.kernel is input_grad_kernels.input_grad_kernel
        weights = converted.get(gemm)
        if weights is None:
            weights = converted[gemm] = _input_grad_weights(kernel2d, gemm)
        return {"w_ptr": weights, "xmask_ptr": _ptr(xmask, dummy(weights.device, weights.dtype))}

    return bind


def cell_forward(pre, c_prev, act, ract, h_out=None, c_out=None):
    """Unfused cell: pre-activations (B, P, 4F), c_prev (B, P, F) fp32 -> h (B, P, F) in pre's
    dtype, c (B, P, F) fp32, written into h_out / c_out when given (any sample stride, e.g. time
    slices of the sequence buffers). 2-D (M, 4F) / (M, F) inputs are read as P = 1."""
    flat = pre.dim() == 2
    if flat:
        pre, c_prev = pre[:, None], c_prev[:, None]
    B, P, N = pre.shape
    F = N // 4
    h = h_out if h_out is not None else new_buffer((B, P, F), pre.device, pre.dtype)
    c = c_out if c_out is not None else new_buffer((B, P, F), pre.device, torch.float32)
    block_m, block_f, warps = cell_kernels.DEFAULT_CONFIG
    grid = (cdiv(B * P, block_m), cdiv(F, block_f))
    launch_plans.launch(cell_kernels.cell_forward_kernel, grid, (
        pre, pre.stride(0), c_prev, c_prev.stride(0), h, h.stride(0), c, c.stride(0), B * P, P, F),
        ACT=act, RACT=ract, BLOCK_M=block_m, BLOCK_F=block_f, num_warps=warps,
        enable_fp_fusion=FP_FUSION)
    return (h[:, 0], c[:, 0]) if flat else (h, c)


def cell_backward(dh, dc, pre, c, c_prev, act, ract):
    """Unfused cell backward -> d pre-activations (M, 4F), dc_prev (M, F) fp32."""
    M, N = pre.shape
    F = N // 4
    dpre = new_buffer(pre.shape, pre.device, pre.dtype)
    dc_prev = new_buffer((M, F), pre.device, torch.float32)
    block_m, block_f, warps = cell_kernels.DEFAULT_CONFIG
    grid = (cdiv(M, block_m), cdiv(F, block_f))
    launch_plans.launch(cell_kernels.cell_backward_kernel, grid,
                        (dh, dc, pre, c, c_prev, dpre, dc_prev, M, F),
                        ACT=act, RACT=ract, BLOCK_M=block_m, BLOCK_F=block_f, num_warps=warps,
                        enable_fp_fusion=FP_FUSION)
    return dpre, dc_prev
