"""Autograd over a whole sequence (as cuDNN's RNN): the Triton forward and backward, and the
autograd formula that ties them together.

The two halves run as the custom ops ``torch.ops.convlstm_triton.forward`` and
``torch.ops.convlstm_triton.backward`` (``ops.py``: schemas, fake implementations, and the
registration of ``setup_context`` / ``backward`` below with ``torch.library.register_autograd``),
so that ``torch.compile(fullgraph=True)`` sees two opaque ops instead of tracing into Triton
launches. ``sequence_forward`` and ``sequence_backward`` are the ops' real implementations.

Forward saves, in the compute dtype, the state sequence h (it is the output) and the gate
pre-activations, and the cell states c in fp32; backward re-reads them instead of recomputing
the recurrent convs (a recompute would redo the forward's recurrent GEMMs once more per step),
and recomputes the gates from the pre-activations (cheap elementwise work inside a GEMM kernel,
and it gives every activation, silu and gelu included, an exact derivative). With
``save_preact=False`` (``conv_lstm(recompute_gates=True)``, and "auto" where they are large:
``recompute_by_default``) backward recomputes the pre-activations instead.
Time runs in processing order here: ``go_backwards`` is handled by the caller flipping x.
"""

from dataclasses import dataclass

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from . import launch_plans, launchers, tuning
from .launch_plans import Frames, views
from .launchers import KernelGeometry

# Differentiable inputs of the forward op, in order (the rest are masks and config).
GRAD_INPUTS = ("x", "kernel2d", "recurrent_kernel2d", "bias", "h0", "c0", "peephole")


@dataclass(frozen=True)
class StepSpec:
    """Everything non-tensor the kernels need: geometry, activation codes, dot precision, and
    the forward variant: ``input_variant`` "hoisted" (one input-projection GEMM per time chunk
    of frames, then xg is added in each step) or "fused_input" (the input conv inside each
    step's K loop);
    ``fused_cell`` False runs the cell update as a separate kernel (the unfused baseline);
    ``four_dots`` True runs the first kernel design (four gate dots of N = BLOCK_F, a K loop per
    tap, per-gate input-projection tiles) instead of the wide-MMA one, for comparisons."""

    geometry: KernelGeometry
    act: int
    ract: int
    precision: str
    input_variant: str = "hoisted"
    fused_cell: bool = True
    four_dots: bool = False
    # the recurrent conv's tiles through tensor descriptors (TMA) where the layout allows
    tma: bool = False
    # False: backward recomputes the pre-activations step by step (one more recurrent GEMM per
    # step, and the input projection again) instead of keeping B*T*P*4F of them from forward.
    save_preact: bool = True


# recompute_gates="auto": recompute the pre-activations in backward where keeping them would
# take at least this many bytes. Read off the compiled code (bench/static_perf.py, FORECAST),
# recomputing costs +25-33 % of a training step at the benchmark shapes, whose pre-activations
# (0.6-1.1 GB in bf16) are the largest saved tensor: without them a training step peaks at under
# half the eager PyTorch loop's memory (bench/memory_forecast.py). Below this size the memory
# saved is small and the extra launches per step are not worth it.
RECOMPUTE_MIN_BYTES = 256 << 20


def recompute_by_default(B, T, P, F, itemsize):
    """recompute_gates="auto" for a (B, T, P, F) sequence of ``itemsize``-byte elements. A
    symbolic size (export with a dynamic dimension) keeps the gates unless it is known to be
    large: no guard on the size is added to the program."""
    return guard_or_false(B * T * P * 4 * F * itemsize >= RECOMPUTE_MIN_BYTES)


# conv_lstm's forward_variant -> StepSpec's (input_variant, fused_cell, four_dots, tma); "auto"
# resolves to "hoisted" or "fused_input" by measurement (ops.choose_forward_variant)
FORWARD_VARIANT_FLAGS = {
    "hoisted": ("hoisted", True, False, False),
    "hoisted_tma": ("hoisted", True, False, True),
    "fused_input": ("fused_input", True, False, False),
    "unfused": ("hoisted", False, False, False),
    "hoisted_four_dots": ("hoisted", True, True, False),
    "fused_input_four_dots": ("fused_input", True, True, False),
}


def sequence_forward(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask,
                     hmask, spec: StepSpec, training: bool, problem=None):
    """(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask)
    -> (states, h_T, c_T, c_all, preact).

    x (B, T, D, H, W, C_in) contiguous; kernel2d (K_in, 4F); recurrent_kernel2d (K_rec, 4F);
    bias (4F,) or None; h0 (B, P, F) compute dtype, contiguous; c0 (B, P, F) any float dtype;
    peephole (3F,) per-channel peephole weights w_ci, w_cf, w_co, or None;
    mask (B, T) int8 or None; xmask (4, B, D, H, W, C_in) and hmask (4, B, P, F) per-gate
    dropout masks (compute dtype, contiguous) or None.
    states (B, T, P, F): the state h after every step (equal to the output sequence except at
    leading masked steps, which the caller zeroes); h_T (B, P, F); c_T (B, P, F) fp32.
    ``training``: keep what backward reads: c_all (B, T+1, P, F) fp32 (slot 0 holds c0) and,
    with ``spec.save_preact``, preact (B, T, P, 4F) compute dtype; otherwise those two are
    None and nothing of their size is allocated (inference reads c0 itself, ping-pongs two
    cell-state slots between the first and the last step, which writes c_T, and keeps no
    pre-activations).
    ``problem``: ``problem_plans`` of the op's call (from the op's own configuration), or
    None: from ``spec``.
    """
    geom = spec.geometry
    B, T = x.shape[:2]
    P = geom.out_pixels
    F = recurrent_kernel2d.shape[1] // 4

    # the launch plans' skeletons of this problem, from earlier calls (launch_plans.Planned)
    if problem is None:
        problem = problem_plans("forward", (spec, training), (
            x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask))
    xg = (_InputProjection(spec, x, kernel2d, bias, xmask, problem)
          if spec.input_variant == "hoisted" else None)
    # the gate-interleaved weight copies are made once here, not at every step
    kernel2d = launchers.GateWeights(kernel2d)
    recurrent_kernel2d = launchers.GateWeights(recurrent_kernel2d)
    states = launchers.new_buffer((B, T, P, F), x.device, x.dtype)
    if training:  # c_0 .. c_T for backward; the last one copied out as c_T
        c_all = launchers.new_buffer((B, T + 1, P, F), x.device, torch.float32)
        c_all[:, 0] = c0
        c_f = Frames(c_all)
        c_frames = [(c_f, s) for s in range(T + 1)]
        c_final = None
    else:
        # Inference keeps no cell states: step 0 reads c0 itself, the steps between ping-pong
        # two slots, and the last writes the returned c_T (no copies in or out).
        c_final = launchers.new_buffer((B, P, F), x.device, torch.float32)
        c_pong = (Frames(launchers.new_buffer((B, 2, P, F), x.device, torch.float32))
                  if T > 1 else None)
        c_frames = ([(Frames.of_state(c0.float().contiguous()), 0)]
                    + [(c_pong, s % 2) for s in range(1, T)] + [(Frames.of_state(c_final), 0)])
    # Pre-activations: all steps when backward reads them; one step's scratch for the
    # unfused cell kernel otherwise.
    keep_preact = training and spec.save_preact
    preact = None
    if keep_preact or not spec.fused_cell:
        preact = launchers.new_buffer((B, T if keep_preact else 1, P, 4 * F), x.device,
                                      x.dtype)
    step = _forward_steps(spec, kernel2d, recurrent_kernel2d, bias, xmask, hmask, peephole,
                          shared=problem.setdefault("step_forward", {}))
    h0_f, states_f = Frames.of_state(h0), Frames(states)
    preact_f = Frames(preact) if preact is not None else None
    x_f = Frames(x) if xg is None else None
    mask_f = Frames(mask) if mask is not None else None
    for s in range(T):
        xg_t = xg.frame(s) if xg is not None else None
        preact_t = (preact_f, s if keep_preact else 0) if preact_f is not None else None
        # plans: step 0 reads h0 (and in inference c0), the last step writes c_T in inference
        # (other sample strides), a shorter last chunk of xg has another one too
        step((s == 0, s == T - 1 and not training,
              xg_t[0].stride0 if xg_t is not None else None),
             (h0_f, 0) if s == 0 else (states_f, s - 1), c_frames[s], xg_t,
             (x_f, s) if x_f is not None else None, (states_f, s), c_frames[s + 1], preact_t,
             (mask_f, s) if mask_f is not None else None)
        if not spec.fused_cell:
            c_prev, c_next = views(c_frames[s: s + 2])
            launchers.cell_forward(preact_f.view(preact_t[1]), c_prev, spec.act, spec.ract,
                                   h_out=states[:, s], c_out=c_next)
    del xg, step  # the plans' records hold xg's buffer too
    # Fresh contiguous outputs: a custom op's outputs may not alias each other.
    h_final = states[:, T - 1].clone(memory_format=torch.contiguous_format)
    if training:
        c_final = c_all[:, T].clone(memory_format=torch.contiguous_format)
    return states, h_final, c_final, c_all if training else None, preact if keep_preact else None


# The step kernels' pointer parameters that move with the time step, in the order the
# sequence loops pass them (launch_plans.StepLaunch replays the rest from the first launch).
STEP_FORWARD_SLOTS = ("h_prev_ptr", "c_prev_ptr", "xg_ptr", "x_ptr", "h_ptr", "c_ptr",
                      "preact_ptr", "mask_ptr")
# the weight-gradient launcher's partial sums, allocated per launch (replays reuse the first's)
WEIGHT_GRAD_OWNED = ("dw_ptr", "db_ptr")
# the input-gradient launches' chunk of dgates and of dx (written in place), and the weights
# its launcher converts for the reduction kernel
INPUT_GRAD_SLOTS = ("dg_ptr", "dx_ptr")
INPUT_GRAD_OWNED = ("w_ptr",)
STEP_BACKWARD_SLOTS = ("dg_next_ptr", "dy_ptr", "preact_ptr", "c_ptr", "c_prev_ptr", "mask_ptr",
                       "dg_ptr")


def problem_plans(kind, config, tensors):
    """``launch_plans.problem_plans`` of one sequence op's call: keyed by everything its
    launches depend on but the tensors' memory: ``config`` (hashable: the spec or the op's
    configuration, flags), the tensors' shapes and dtypes (each is contiguous, or copied into
    a buffer of the op's), the device, the launchers' settings and the tuning state. Besides
    the plans' skeletons, the ops keep the call's resolved spec in it ("spec")."""
    x = tensors[3] if kind == "backward" else tensors[0]
    key = (kind, config, x.device, launchers.settings(), tuning.generation(),
           *[None if t is None else (t.shape, t.dtype) for t in tensors])
    return launch_plans.problem_plans(key)


def _forward_steps(spec, kernel2d, recurrent_kernel2d, bias, xmask, hmask, peephole,
                   store_state=True, shared=None):
    """The forward step launches of one sequence as plans (``launch_plans.Planned``), called
    with a plan key and one (Frames, index) or None per ``STEP_FORWARD_SLOTS``.
    ``store_state`` False: only the pre-activations are stored (backward's recomputation).
    ``shared``: the plans' skeletons across calls of the problem (``problem_plans``)."""

    def jit_launch(h_prev, c_prev, xg_t, x_t, h_out, c_out, preact_t, mask_t):
        inputs = (dict(xg_t=xg_t) if xg_t is not None else
                  dict(xg_t=None, x_t=x_t, kernel2d=kernel2d, bias=bias, xmask=xmask))
        return launchers.step_forward(
            h_prev=h_prev, c_prev=c_prev, rk2d=recurrent_kernel2d,
            h_out=h_out if store_state else None, c_out=c_out if store_state else None,
            preact_t=preact_t, mask_t=mask_t, hmask=hmask, peephole=peephole,
            geom=spec.geometry, act=spec.act, ract=spec.ract, precision=spec.precision,
            cell=spec.fused_cell or not store_state, four_dots=spec.four_dots, tma=spec.tma,
            **inputs)

    bind = launchers.step_forward_binder(recurrent_kernel2d, hmask, peephole, kernel2d=kernel2d,
                                         bias=bias, xmask=xmask)
    return launch_plans.Planned(jit_launch, STEP_FORWARD_SLOTS, bind=bind, shared=shared)


def sequence_backward(d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states,
                      c_all, preact, peephole, mask, xmask, hmask, spec: StepSpec, needs,
                      problem=None):
    """Gradients of ``sequence_forward``'s (states, h_T, c_T) -> one per entry of
    ``GRAD_INPUTS``: dx (x's shape and dtype), then d kernel2d, d recurrent_kernel2d, d bias,
    dh0, dc0, d peephole, all fp32 (the caller casts them to the inputs' dtypes). ``needs``: 7
    bools (``GRAD_INPUTS``); a gradient not needed (or of an absent bias/peephole) is an empty
    fp32 tensor. ``preact`` None: recompute the pre-activations (``spec.save_preact`` False).
    Incoming gradients may be None (unused outputs). ``problem``: as ``sequence_forward``'s.

    Time runs backwards in chunks of Tc steps (``launchers.time_chunk``): the step kernels
    write the chunk's gate gradients dgates (B, Tc, P, 4F), then the chunk's input gradient and
    its share of the weight (and bias, peephole) gradients run as GEMMs over its B·Tc·P rows,
    summed into fp32 totals chunk after chunk in a fixed order (bit-identical run to run).
    Two chunk buffers alternate: a chunk's last step reads dgates_{s+1} from the chunk before.
    """
    geom = spec.geometry
    B, T = x.shape[:2]
    P, F = states.shape[2:]
    need_x, need_k, need_rk, need_b, need_h0, need_c0, need_peep = needs
    need_b = need_b and bias is not None
    need_peep = need_peep and peephole is not None

    # The carries are rewritten in place by the kernels, which index them as contiguous
    # (B, P, F): a fresh contiguous copy whatever layout the incoming gradient has.
    if problem is None:
        problem = problem_plans("backward", (spec, tuple(needs)), (
            d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, preact,
            peephole, mask, xmask, hmask))
    dh_carry = (d_h.float().clone(memory_format=torch.contiguous_format) if d_h is not None
                else torch.zeros((B, P, F), device=x.device, dtype=torch.float32))
    dc_carry = (d_c.float().clone(memory_format=torch.contiguous_format) if d_c is not None
                else torch.zeros((B, P, F), device=x.device, dtype=torch.float32))
    d_states = d_states.contiguous() if d_states is not None else None
    chunk = launchers.time_chunk(B, T, P)
    buffers = [launchers.new_buffer((B, chunk, P, 4 * F), x.device, x.dtype)
               for _ in range(1 if chunk >= T else 2)]
    recompute = _Recompute(spec, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all,
                           mask, xmask, hmask, peephole, problem) if preact is None else None
    # the recurrent kernel flipped and transposed for the dgrad, made once, not at every step
    rk_dgrad = launchers.DgradWeights(recurrent_kernel2d)
    grads = _ChunkGradients(x, kernel2d, h0, states, c_all, xmask, hmask, spec,
                            need_x, need_k, need_b, need_rk, need_peep, problem)
    preact_f = Frames(preact) if preact is not None else None
    dy_f = Frames(d_states) if d_states is not None else None
    c_f = Frames(c_all)
    mask_f = Frames(mask) if mask is not None else None
    steps = {}  # plans per dh_live: without masks only the last step can have a live dh

    def step_launches(dh_live):
        def jit_launch(dg_next, dy, preact_t, c_t, c_prev, mask_t, dg_out):
            return launchers.step_backward(
                dg_next, rk_dgrad, dy, dh_carry, dc_carry, preact_t, c_t, c_prev, mask_t,
                hmask, peephole, dg_out, geom, spec.act, spec.ract, spec.precision,
                dh_live=dh_live)
        return launch_plans.Planned(
            jit_launch, STEP_BACKWARD_SLOTS, bind=launchers.step_backward_binder(
                rk_dgrad, dh_carry, dc_carry, hmask, peephole),
            shared=problem.setdefault(("step_backward", dh_live), {}))

    dg_next = None
    for i, start in enumerate(reversed(range(0, T, chunk))):
        stop = min(start + chunk, T)
        dgates = launchers.chunk_buffer(buffers[i % len(buffers)], stop - start)
        dgates_f = Frames(dgates)
        for s in reversed(range(start, stop)):
            preact_s = recompute.preact(s) if recompute is not None else (preact_f, s)
            # without masks every step leaves the dh carry zero: only d_h enters it
            dh_live = mask is not None or (s == T - 1 and d_h is not None)
            step = steps.get(dh_live) or steps.setdefault(dh_live, step_launches(dh_live))
            # plans: the last step has no dg_next; a shorter chunk has other sample strides
            step((dg_next is None, dgates_f.stride0, preact_s[0].stride0,
                  dg_next[0].stride0 if dg_next is not None else None),
                 dg_next, (dy_f, s) if dy_f is not None else None, preact_s, (c_f, s + 1),
                 (c_f, s), (mask_f, s) if mask_f is not None else None, (dgates_f, s - start))
            dg_next = (dgates_f, s - start)
        grads.add_chunk(dgates, start, stop)

    dh0 = dc0 = None
    if need_h0:
        dg_next = dg_next[0].view(dg_next[1])
        launchers.step_backward(dg_next, rk_dgrad, None, dh_carry, dc_carry,
                                None, None, None, None, hmask, None, None, geom, spec.act,
                                spec.ract, spec.precision, cell=False, dh_live=mask is not None)
        dh0 = dh_carry
    if need_c0:
        dc0 = dc_carry
    dx, dk, drk, db, dpeep = grads.totals()

    def empty():
        return torch.empty((0,), device=x.device, dtype=torch.float32)

    return tuple(g if g is not None else empty() for g in (dx, dk, drk, db, dh0, dc0, dpeep))


class _ChunkGradients:
    """The gradients that are sums over time (weights, bias, peepholes) and the input gradient,
    from one time chunk of gate gradients at a time: launches over the chunk's B·Tc·P rows,
    fp32 totals added in chunk order."""

    def __init__(self, x, kernel2d, h0, states, c_all, xmask, hmask, spec, need_x, need_k,
                 need_b, need_rk, need_peep, problem):
        self.x, self.kernel2d, self.h0, self.states, self.c_all = x, kernel2d, h0, states, c_all
        self.xmask, self.hmask, self.spec = xmask, hmask, spec
        self.need_x, self.need_k, self.need_b = need_x, need_k, need_b
        self.need_rk, self.need_peep = need_rk, need_peep
        # each chunk's launch writes its frames of dx in place
        self.dx = launchers.new_buffer(x.shape, x.device, x.dtype) if need_x else None
        # one binder for the call's input-gradient plans: its weights converted once
        self.input_grad_bind = launchers.input_grad_binder(kernel2d, xmask) if need_x else None
        self.dpeep = None
        self.plans, self.frames, self.problem = {}, {}, problem
        geom = spec.geometry
        B, F = x.shape[0], states.shape[3]
        self.input_weight = (_WeightGradient(xmask, geom, need_b, spec.precision,
                                             problem.setdefault("input_weight", {}))
                             if need_k or need_b else None)
        self.recurrent_weight = (_WeightGradient(hmask, geom.recurrent_as_conv(), False,
                                                 spec.precision,
                                                 problem.setdefault("recurrent_weight", {}))
                                 if need_rk else None)
        # the recurrent conv's input frames: h_{s-1} (B, T, *spatial, F), and h0 as one frame
        self.states_frames = states.view(B, -1, *geom.out_spatial, F)
        self.h0_frames = Frames(h0.view(B, 1, *geom.out_spatial, F), 1)

    @staticmethod
    def _add(total, part):
        return part if total is None else total.add_(part)

    def _plan(self, name, length, jit_launch, slots, owned, bind):
        """The plans of one launch kind for chunks of ``length`` steps (made on first use)."""
        plan = self.plans.get((name, length))
        if plan is None:
            plan = self.plans[(name, length)] = launch_plans.Planned(
                jit_launch, slots, owned, bind=bind,
                shared=self.problem.setdefault((name, length), {}))
        return plan

    def _frames(self, name, tensor, length):
        """``tensor``'s (B, T, ...) frames ``length`` at a time, as Frames (made once)."""
        frames = self.frames.get((name, length))
        if frames is None:
            frames = self.frames[(name, length)] = Frames(tensor, length)
        return frames

    def add_chunk(self, dgates, start, stop):
        spec, geom, x = self.spec, self.spec.geometry, self.x
        kernel2d, xmask = self.kernel2d, self.xmask  # the plans' lambdas must not hold self
        B = x.shape[0]
        P, F = self.states.shape[2:]
        steps = stop - start
        dgates_f = Frames(dgates, steps)
        if self.need_x:
            self._plan("input_grad", steps, lambda dg, dx: launchers.input_grad_launch(
                dg, kernel2d, xmask, geom, x.shape[-1], spec.precision, out=dx),
                INPUT_GRAD_SLOTS, INPUT_GRAD_OWNED, self.input_grad_bind)(
                None, (dgates_f, 0), (self._frames("dx", self.dx, steps), start))
        if self.need_k or self.need_b:
            self.input_weight.add(steps, (self._frames("x", x, steps), start), (dgates_f, 0))
        if self.need_rk:
            # step s's recurrent conv read h_{s-1}: states[:, s-1], or h0 at s = 0
            first = start + (start == 0)
            if first < stop:
                length = stop - first
                self.recurrent_weight.add(
                    length, (self._frames("states", self.states_frames, length), first - 1),
                    (Frames(dgates, length), first - start))
            if start == 0:
                self.recurrent_weight.add(1, (self.h0_frames, 0), (Frames(dgates, 1), 0))
        if self.need_peep:
            # sum over (b, t, p) of d_i * c_{t-1}, d_f * c_{t-1}, d_o * c_t (masked steps have
            # zero gate gradients): elementwise on the chunk, at copy speed
            dg = dgates.view(B, stop - start, P, 4, F).float()
            c_prev, c = self.c_all[:, start:stop], self.c_all[:, start + 1: stop + 1]
            self.dpeep = self._add(self.dpeep, torch.stack([
                (dg[:, :, :, 0] * c_prev).sum((0, 1, 2)),
                (dg[:, :, :, 1] * c_prev).sum((0, 1, 2)),
                (dg[:, :, :, 3] * c).sum((0, 1, 2)),
            ]).reshape(-1))

    def totals(self):
        dk = db = drk = None
        if self.input_weight is not None:
            dk, db = self.input_weight.totals()
        if self.recurrent_weight is not None:
            drk = self.recurrent_weight.totals()[0]
        return (self.dx, dk if self.need_k else None, drk, db if self.need_b else None,
                self.dpeep)


class _WeightGradient:
    """One weight's gradient (and bias's) over a sequence's time chunks: the first launch
    writes fp32 partials, every later one adds to them (the kernel's ACCUMULATE, in stream
    order), and one fixed-order sum of the splits at the end; a launch whose config has
    another partials layout (a chunk of another size may tune to another config) is summed on
    its own. Bit-identical run to run."""

    def __init__(self, smask, geom, with_bias, precision, shared):
        self.smask, self.geom, self.with_bias, self.precision = smask, geom, with_bias, precision
        self.shared = shared  # the plans' skeletons across calls (``problem_plans``)
        self.target = None  # the first launch's Record: the partials the others add to
        self.plans = {}
        self.extra = None  # (dW, db) of launches that could not add to the target's

    def add(self, length, src, dgates):
        """One chunk: ``src`` and ``dgates`` as (Frames, index) of ``length`` frames."""
        into = self.target
        plan = self.plans.get((length, into is None))
        if plan is None:
            # no reference to self in the plan (a cycle: freed only by the garbage collector)
            smask, geom, with_bias, precision = (self.smask, self.geom, self.with_bias,
                                                 self.precision)
            plan = self.plans[(length, into is None)] = launch_plans.Planned(
                lambda s, g: launchers.weight_grad_launch(s, g, smask, geom, with_bias,
                                                          precision, into=into),
                ("src_ptr", "dg_ptr"), WEIGHT_GRAD_OWNED,
                bind=launchers.weight_grad_binder(smask, src[0].tensor.device, into),
                shared=self.shared.setdefault((length, into is None), {}))
        record = plan(None, src, dgates)
        if into is None:
            self.target = record
        elif record.args["dw_ptr"] is not into.args["dw_ptr"]:
            dw, db = launchers.weight_grad_sums(record)
            self.extra = (dw, db) if self.extra is None else (
                self.extra[0].add_(dw), None if db is None else self.extra[1].add_(db))

    def totals(self):
        dw, db = launchers.weight_grad_sums(self.target)
        if self.extra is not None:
            dw = dw.add_(self.extra[0])
            db = None if db is None else db.add_(self.extra[1])
        return dw, db


class _InputProjection:
    """The hoisted input projection xg of a sequence, one time chunk at a time
    (``launchers.time_chunk``): step s's (B, P, 4F) slice, computed with its chunk's frames
    when s is the first step asked for of another chunk, in one (B, Tc, P, 4F) buffer reused
    by every chunk (the sequence's xg would be B·T·P·4F elements). Forward asks for the steps
    in order, backward's recomputation in reverse: each chunk is projected once either way."""

    def __init__(self, spec, x, kernel2d, bias, xmask, problem):
        B, T = x.shape[:2]
        self.problem = problem  # the plans' skeletons across calls (``problem_plans``)
        P = spec.geometry.out_pixels
        self.spec, self.x, self.kernel2d, self.bias, self.xmask = spec, x, kernel2d, bias, xmask
        self.chunk = launchers.time_chunk(B, T, P)
        N = launchers.GateWeights.of(kernel2d).gate_major.shape[1]
        self.buffer = launchers.new_buffer((B, self.chunk, P, N), x.device, x.dtype)
        self.start = None  # first step of the chunk in the buffer
        # per chunk length (the last chunk may be shorter): the buffer's first steps and the
        # frames of x as Frames, and the projection's plan
        self.lengths = {}

    def _length(self, steps):
        entry = self.lengths.get(steps)
        if entry is None:
            out = Frames(launchers.chunk_buffer(self.buffer, steps))
            # no reference to self in the plan: a cycle would keep the buffer alive until the
            # garbage collector runs
            kernel2d, bias, xmask, spec = self.kernel2d, self.bias, self.xmask, self.spec
            plan = launch_plans.Planned(
                lambda x_chunk: launchers.input_projection_launch(
                    x_chunk, kernel2d, bias, xmask, spec.geometry, spec.precision,
                    four_dots=spec.four_dots, out=out.tensor),
                ("x_ptr",),
                bind=launchers.input_projection_binder(kernel2d, bias, xmask, out.tensor),
                shared=self.problem.setdefault(("input_projection", steps), {}))
            entry = self.lengths[steps] = (out, Frames(self.x, steps), plan)
        return entry

    def frame(self, s):
        """Step s's (B, P, 4F) slice as (Frames, index)."""
        start = s - s % self.chunk
        out, x_f, project = self._length(min(self.chunk, self.x.shape[1] - start))
        if start != self.start:
            project(None, (x_f, start))
            self.start = start
        return out, s - start


class _Recompute:
    """Backward's source of pre-activations when forward did not keep them: step s reruns the
    forward step kernel from the saved h_{s-1} and c_{s-1} (same variant, config, masks and
    peepholes, so the numbers are forward's own), storing only the pre-activations (forward
    saved h and c): over the step's slice of the hoisted xg, in place (read once, last
    needed there), or into one step's scratch with the fused input."""

    def __init__(self, spec, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, mask,
                 xmask, hmask, peephole, problem):
        B = x.shape[0]
        P, F = states.shape[2:]
        self.xg = (_InputProjection(spec, x, kernel2d, bias, xmask, problem)
                   if spec.input_variant == "hoisted" else None)
        self.preact_buf = (None if self.xg is not None else Frames.of_state(
            launchers.new_buffer((B, P, 4 * F), x.device, x.dtype)))
        self.h0_f, self.states_f, self.c_f = Frames.of_state(h0), Frames(states), Frames(c_all)
        self.x_f = Frames(x) if self.xg is None else None
        self.mask_f = Frames(mask) if mask is not None else None
        self.step = _forward_steps(spec, launchers.GateWeights(kernel2d),
                                   launchers.GateWeights(recurrent_kernel2d), bias, xmask,
                                   hmask, peephole, store_state=False,
                                   shared=problem.setdefault("recompute_step", {}))

    def preact(self, s):
        """Step s's pre-activations as (Frames, index)."""
        if self.xg is not None:
            xg_t = preact_t = self.xg.frame(s)
        else:
            xg_t, preact_t = None, (self.preact_buf, 0)
        self.step((s == 0, xg_t[0].stride0 if xg_t is not None else None),
                  (self.h0_f, 0) if s == 0 else (self.states_f, s - 1), (self.c_f, s), xg_t,
                  (self.x_f, s) if self.x_f is not None else None, None, None, preact_t,
                  (self.mask_f, s) if self.mask_f is not None else None)
        return preact_t


# ---------------------------------------------------------------------------------------------
# The autograd formula of torch.ops.convlstm_triton.forward (registered in ops.py).


def setup_context(ctx, inputs, output):
    (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask, geometry,
     act, ract, precision, variant, training, save_preact) = inputs
    states, _, _, c_all, preact = output
    ctx.mark_non_differentiable(c_all, preact)
    ctx.set_materialize_grads(False)  # unused outputs: no zero-filled gradients
    ctx.config = (list(geometry), act, ract, precision, variant)
    ctx.save_preact = save_preact
    ctx.dtypes = tuple(t.dtype if t is not None else None
                       for t in (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole))
    ctx.inference_only = not training
    if not training:
        # Eager calls ask for training buffers exactly when autograd records the op; a program
        # traced or exported under torch.no_grad() keeps training=False and may still run with
        # grad enabled: it runs, and only a backward through it fails (with what to do).
        return
    ctx.save_for_backward(x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all,
                          preact if save_preact else None, peephole, mask, xmask, hmask)


def backward(ctx, d_states, d_h, d_c, _d_c_all, _d_preact, backward_op=None):
    """``backward_op``: the backward op's implementation (eager mode, ``ops.run_forward``);
    None: the op ``torch.ops.convlstm_triton.backward``."""
    if ctx.inference_only:
        raise RuntimeError(
            "convlstm_triton: this ConvLSTM ran its inference forward, which keeps nothing for "
            "a backward pass: the program was traced or exported under torch.no_grad() (or "
            "inference mode). To train through it, trace or export it with grad enabled.")
    needs = [bool(n) for n in ctx.needs_input_grad[:len(GRAD_INPUTS)]]
    op = backward_op if backward_op is not None else torch.ops.convlstm_triton.backward
    grads = op(d_states, d_h, d_c, *ctx.saved_tensors, *ctx.config, needs)
    out = [g.to(dtype) if need else None for g, need, dtype in zip(grads, needs, ctx.dtypes)]
    # mask, xmask, hmask and the 7 config arguments get no gradient
    return (*out, None, None, None) + (None,) * 7
