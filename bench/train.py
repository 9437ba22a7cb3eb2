"""Train the Keras next-frame video-prediction model with convlstm_triton's ConvLSTM2D layers.

    python bench/train.py                         # GPU: Triton kernels, Keras-example sizes
                                                  # CPU: a small run on the reference (< 1 min)
    python bench/train.py --compare               # + the eager cuDNN ConvLSTM, same init and data
    python bench/train.py --data movies.npy       # your own (N, T, H, W) sequences
    torchrun --nproc_per_node 4 bench/train.py    # data-parallel (DDP), no code change

The model is the one of the Keras example "Next-frame video prediction with convolutional LSTMs":

    frames (B, T, H, W, 1)
    -> ConvLSTM2D(F, 5x5, "same", relu, return_sequences) -> BatchNorm
    -> ConvLSTM2D(F, 3x3, "same", relu, return_sequences) -> BatchNorm
    -> ConvLSTM2D(F, 1x1, "same", relu, return_sequences)
    -> Conv3D(1, 3x3x3, "same", sigmoid)          # the next frame, per time step

trained with Adam on the binary cross-entropy between the prediction at step t and frame t + 1
(each sequence of ``--seq-len`` frames gives ``seq-len - 1`` inputs and as many targets).
In torch: our layers are channels-last (B, T, H, W, C); BatchNorm3d/Conv3d take (B, C, T, H, W),
which is a permuted *view* of that tensor (the channels_last_3d layout, native to cuDNN). Keras
details kept: Glorot-uniform Conv3D kernel with zero bias, BatchNorm epsilon 1e-3, Adam epsilon
1e-7, the ConvLSTM initializers (glorot_uniform / orthogonal / unit forget bias). Changed: the
Conv3D returns logits and the loss is ``binary_cross_entropy_with_logits`` (the same loss, stable
under autocast), and BatchNorm momentum is torch's 0.1 (Keras' 0.99 is torch's 0.01, whose running
statistics need hundreds of steps to settle: the short runs here evaluate with them).

Data: Moving-MNIST-style sequences generated on the fly: ``--num-digits`` digits (scikit-learn's
8x8 ``load_digits`` images, upscaled to ``--digit-size``; without scikit-learn a built-in 5x7
font) moving with constant velocities on a ``--size`` canvas, bouncing off the borders. Sequence
``i`` is a pure function of ``(--seed, i)``, so any process can make any sequence: each epoch,
the indices are shuffled and split between ranks like ``DistributedSampler``. ``--data PATH.npy``
reads ``(N, T, H, W)`` (or ``(N, T, H, W, 1)``) sequences instead: uint8 (divided by 255) or
float in [0, 1]; the last tenth of them is the validation set, and a window of ``--seq-len``
frames is drawn per sample when T is longer.

Defaults (``--help`` shows both): on a CUDA GPU the Keras example's sizes, with
``--backend triton``: 64 filters, 64x64 frames (as Moving MNIST), 20-frame sequences (19 steps;
layers 1 and 2 are then bench/bench_convlstm.py's mnist_l1 and mnist_l2 shapes), batch 16, 10
epochs of 100 steps, one untimed warm-up step (Triton compile + autotuning, cuDNN benchmark); the
rollout in predictions.png predicts frames 10-19 from the first 10, as the Keras example shows.
On a CPU, a short run on the reference implementation: 16 filters, 24x24 frames, 10-frame
sequences, batch 8, 3 epochs of 40 steps (about 20 s on 2 idle cores; 77 s measured on 2 cores
shared with a test run, load 5): the next-frame predictions are recognizable by then.

Prints a progress bar (tqdm if installed, else plain lines) with loss and frames/s (input frames
of all ranks per second), the time per epoch (training steps only: warm-up and validation are
not timed) and at the end a table of them, and writes to ``--out`` (default bench/results/train):

    metrics.json     config, machine, per run: per-epoch train/val loss, time, frames/s, every
                     step's loss (rewritten after every epoch: a run cut short keeps its epochs)
    epochs.csv       one row per (model, epoch)
    loss.png         loss curves (models overlaid with --compare)      } needs matplotlib;
    predictions.png  ground truth, next-frame predictions and a        } skipped with a
                     rollout from the first half of a validation clip  } message without

``--compare`` trains the same model a second time with the eager ConvLSTM of
bench/eager_convlstm.py (``--peer cat``: one cuDNN conv on cat(x, h) per step, the common PyTorch
ConvLSTM; ``hoisted``: the input conv of all frames first), from the same initial weights on the
same batches, and prints both times per epoch and their ratio. On a CPU both run plain PyTorch.

``--dtype bf16``: mixed precision with ``torch.autocast`` (fp32 master weights). The ConvLSTM
layers follow autocast themselves (x, the weights and h0 are cast to bf16, the kernels keep c in
fp32; the casts are differentiable, so the fp32 weights get fp32 gradients).

DDP: under torchrun (``WORLD_SIZE`` > 1) each rank trains on its own shard of every epoch with
``--batch-size`` sequences per step (global batch = batch size x ranks); nccl on CUDA, gloo on
CPU; only rank 0 prints and writes. Logged losses are averaged over ranks.
"""

import os

if __name__ == "__main__":
    # Before torch loads OpenMP: its default busy-waiting made CPU training steps 3-20x slower on
    # a machine shared with other jobs (2 cores, load 5); passive waiting costs little on idle
    # cores. (Run as a script only: an importer's process keeps its own setting.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import csv
import datetime
import functools
import itertools
import json
import math
import platform
import statistics
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from eager_convlstm import EagerConvLSTM, EagerHoistedConvLSTM  # noqa: E402

from convlstm_triton import ConvLSTM2D  # noqa: E402

CPU_DEFAULTS = dict(filters=16, size=24, seq_len=10, batch_size=8, epochs=3, steps_per_epoch=40,
                    warmup_steps=0)
GPU_DEFAULTS = dict(filters=64, size=64, seq_len=20, batch_size=16, epochs=10,
                    steps_per_epoch=100, warmup_steps=1)
KERNEL_SIZES = (5, 3, 1)  # the Keras example's three ConvLSTM2D layers
PEERS = {"cat": EagerConvLSTM, "hoisted": EagerHoistedConvLSTM}
CSV_FIELDS = ("model", "epoch", "steps", "batch_size", "world_size", "seq_len", "size", "filters",
              "dtype", "train_loss", "val_loss", "time_s", "frames_per_s", "data_wait_s")


# ---------------------------------------------------------------------------------------------
# digits

# A 5x7 font for 0-9, used when scikit-learn (the source of the 8x8 digit images) is missing.
FONT_5X7 = (
    " ### |#   #|#  ##|# # #|##  #|#   #| ### ",  # 0
    "  #  | ##  |  #  |  #  |  #  |  #  | ### ",  # 1
    " ### |#   #|    #|   # |  #  | #   |#####",  # 2
    "#####|   # |  #  |   # |    #|#   #| ### ",  # 3
    "   # |  ## | # # |#  # |#####|   # |   # ",  # 4
    "#####|#    |#### |    #|    #|#   #| ### ",  # 5
    "  ## | #   |#    |#### |#   #|#   #| ### ",  # 6
    "#####|    #|   # |  #  | #   | #   | #   ",  # 7
    " ### |#   #|#   #| ### |#   #|#   #| ### ",  # 8
    " ### |#   #|#   #| ####|    #|   # | ##  ",  # 9
)


def font_glyphs():
    """The built-in font: (10, 7, 5) float32 in {0, 1}."""
    return np.array([[[ch == "#" for ch in row] for row in glyph.split("|")]
                     for glyph in FONT_5X7], dtype=np.float32)


def load_glyphs(source="auto"):
    """Digit images (n, h, w) float32 in [0, 1] and a description.

    ``source``: "sklearn" (the 1797 8x8 images of ``sklearn.datasets.load_digits``, shipped inside
    scikit-learn), "font" (the built-in 5x7 font) or "auto" (sklearn if installed, else font).
    """
    if source in ("auto", "sklearn"):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            if source == "sklearn":
                raise
        else:
            images = load_digits().images.astype(np.float32) / 16.0
            return images, f"scikit-learn load_digits ({len(images)} 8x8 images)"
    return font_glyphs(), "built-in 5x7 font (scikit-learn not installed)"


def upscale(glyphs, size):
    """(n, h, w) -> (n, size, size * w / h): bilinear, the aspect ratio kept, clipped to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(glyphs, dtype=np.float32))[:, None]
    width = max(1, round(size * glyphs.shape[2] / glyphs.shape[1]))
    out = F.interpolate(t, size=(size, width), mode="bilinear", align_corners=False)
    return out[:, 0].clamp_(0, 1).numpy()


# ---------------------------------------------------------------------------------------------
# data


class MovingDigits:
    """Moving-MNIST-style sequences made on demand: ``batch(indices)`` -> (B, T, H, W) float32.

    Sequence ``i`` depends only on ``(seed, i)``: ``num_digits`` digit images from ``glyphs``
    (already at their drawn size), each starting at a random position with a random direction and
    a speed of 1 to 3 pixels per frame at 32x32 (proportional to ``size``), bouncing off the
    borders; overlapping digits combine by max, as in Moving MNIST.
    """

    def __init__(self, length, seq_len, size, glyphs, num_digits=2, seed=0):
        if glyphs.shape[1] > size or glyphs.shape[2] > size:
            raise ValueError(f"digits of {glyphs.shape[1]}x{glyphs.shape[2]} do not fit on a "
                             f"{size}x{size} canvas")
        self.length, self.seq_len, self.size = length, seq_len, size
        self.glyphs, self.num_digits, self.seed = glyphs, num_digits, seed

    def __len__(self):
        return self.length

    @property
    def frame_shape(self):
        return (self.size, self.size)

    def sequence(self, index, out=None):
        """Sequence ``index`` (T, H, W), drawn into ``out`` (zeros) if given."""
        rng = np.random.default_rng([self.seed, int(index)])
        _, gh, gw = self.glyphs.shape
        room = np.array([self.size - gh, self.size - gw], dtype=np.float64)
        canvas = np.zeros((self.seq_len, self.size, self.size), np.float32) if out is None else out
        t = np.arange(self.seq_len)[:, None]
        for _ in range(self.num_digits):
            glyph = self.glyphs[rng.integers(len(self.glyphs))]
            start = rng.uniform(0, 1, 2) * room
            angle = rng.uniform(0, 2 * math.pi)
            speed = rng.uniform(1.0, 3.0) * self.size / 32
            free = start + t * speed * np.array([math.sin(angle), math.cos(angle)])  # (T, 2)
            # bouncing off the borders = folding the free path into [0, room] (a triangle wave)
            period = np.maximum(2 * room, 1e-9)
            path = np.where(room > 0, room - np.abs(np.mod(free, period) - room), 0.0)
            for frame, (y, x) in zip(canvas, np.rint(path).astype(int).tolist()):
                view = frame[y:y + gh, x:x + gw]
                np.maximum(view, glyph, out=view)
        return canvas

    def batch(self, indices, rng=None):
        out = np.zeros((len(indices), self.seq_len, self.size, self.size), np.float32)
        for i, seq in zip(indices, out):
            self.sequence(i, out=seq)
        return out


class ArrayData:
    """Sequences from an (N, T, H, W[, 1]) array: ``batch(indices, rng)`` -> (B, seq_len, H, W)
    float32 in [0, 1]; with ``rng`` a random window of ``seq_len`` frames per sample, else the
    first ``seq_len`` frames."""

    def __init__(self, array, seq_len, indices):
        self.array, self.seq_len, self.indices = array, seq_len, np.asarray(indices)
        self.scale = 1 / 255 if array.dtype == np.uint8 else 1.0

    def __len__(self):
        return len(self.indices)

    @property
    def frame_shape(self):
        return tuple(self.array.shape[2:4])

    def batch(self, indices, rng=None):
        out = []
        for i in indices:
            seq = self.array[self.indices[i]]
            start = 0
            if rng is not None and seq.shape[0] > self.seq_len:
                start = int(rng.integers(seq.shape[0] - self.seq_len + 1))
            out.append(np.asarray(seq[start:start + self.seq_len], dtype=np.float32))
        frames = np.stack(out).reshape(len(out), self.seq_len, *self.frame_shape) * self.scale
        return frames.astype(np.float32, copy=False)


def load_array(path):
    """An (N, T, H, W) or (N, T, H, W, 1) .npy of uint8 or floats in [0, 1] (memory-mapped)."""
    array = np.load(path, mmap_mode="r")
    if array.ndim == 5 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 4:
        raise ValueError(f"{path}: expected (N, T, H, W) or (N, T, H, W, 1), got {array.shape}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: expected uint8 or float frames, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        sample = np.asarray(array[: min(len(array), 64)])
        if sample.min() < 0 or sample.max() > 1:
            raise ValueError(f"{path}: float frames must lie in [0, 1] (the targets of a binary "
                             f"cross-entropy); got [{sample.min():.3g}, {sample.max():.3g}]")
    if array.shape[0] < 1 or array.shape[1] < 2:
        raise ValueError(f"{path}: need at least 1 sequence of 2 frames, got {array.shape}")
    return array


def shard_indices(length, count, epoch, seed, rank=0, world_size=1):
    """This rank's ``count`` sample indices for ``epoch``, as ``DistributedSampler`` deals them:
    a permutation of ``range(length)`` seeded by (seed, epoch), extended with further
    permutations when ranks x count exceeds it, position p going to rank p % world_size."""
    total = count * world_size
    order = []
    for k in itertools.count():
        if len(order) >= total:
            break
        order.extend(np.random.default_rng([seed, epoch, k]).permutation(length).tolist())
    return order[rank:total:world_size]


def prefetch(fn, items, depth=2):
    """Yield ``(fn(item), seconds waited)`` for each item, computed ahead in one thread."""
    with ThreadPoolExecutor(1) as pool:
        it = iter(items)
        pending = deque(pool.submit(fn, item) for item in itertools.islice(it, depth))
        while pending:
            start = time.perf_counter()
            result = pending.popleft().result()
            waited = time.perf_counter() - start
            for item in itertools.islice(it, 1):
                pending.append(pool.submit(fn, item))
            yield result, waited


# ---------------------------------------------------------------------------------------------
# models


class EagerSequence(nn.Module):
    """An eager peer module (channels-first) returning only its output sequence."""

    def __init__(self, module):
        super().__init__()
        self.cell = module

    def forward(self, x):
        return self.cell(x)[0]


class NextFrameModel(nn.Module):
    """The Keras example's model around any stack of ConvLSTM layers.

    ``rnns``: ConvLSTM modules mapping a sequence to a sequence, channels-last (B, T, H, W, C) if
    ``channels_last`` else channels-first (B, T, C, H, W); a BatchNorm over channels after each but
    the last; the Conv3D head. forward: frames (B, T, H, W) -> next-frame logits (B, T, H, W).
    """

    def __init__(self, rnns, filters, channels_last=True, device=None):
        super().__init__()
        self.rnns = nn.ModuleList(rnns)
        self.channels_last = channels_last
        self.norms = nn.ModuleList(
            nn.BatchNorm3d(filters, eps=1e-3, device=device) for _ in range(len(rnns) - 1)
        )
        self.head = nn.Conv3d(filters, 1, kernel_size=3, padding=1, device=device)
        with torch.no_grad():  # Keras' Conv3D defaults: glorot_uniform kernel, zero bias
            nn.init.xavier_uniform_(self.head.weight)
            self.head.bias.zero_()

    def _to_ncthw(self, x):
        # channels-last (B, T, H, W, C) -> (B, C, T, H, W): a view, channels_last_3d in memory
        return x.permute(0, 4, 1, 2, 3) if self.channels_last else x.transpose(1, 2)

    def _from_ncthw(self, x):
        return x.permute(0, 2, 3, 4, 1) if self.channels_last else x.transpose(1, 2)

    def forward(self, frames):
        x = frames.unsqueeze(-1 if self.channels_last else 2)
        for i, rnn in enumerate(self.rnns):
            x = rnn(x)
            if i < len(self.norms):
                x = self._from_ncthw(self.norms[i](self._to_ncthw(x)))
        return self.head(self._to_ncthw(x))[:, 0]


def build_model(filters, backend, device, seed):
    """Ours: three ConvLSTM2D layers, channels-last, initialized from ``seed``."""
    torch.manual_seed(seed)
    rnns, in_channels = [], 1
    for k in KERNEL_SIZES:
        rnns.append(ConvLSTM2D(filters, k, padding="same", activation="relu",
                               return_sequences=True, in_channels=in_channels,
                               backend=backend, device=device))
        in_channels = filters
    return NextFrameModel(rnns, filters, channels_last=True, device=device)


def eager_twin(model, peer="cat"):
    """The same model, with the same weights, on the eager ConvLSTM of bench/eager_convlstm.py
    (channels-first, as PyTorch code feeds it)."""
    rnns = [
        EagerSequence(PEERS[peer].from_keras_weights(
            rnn.kernel.detach(), rnn.recurrent_kernel.detach(), rnn.bias.detach(),
            activation=rnn.activation, recurrent_activation=rnn.recurrent_activation))
        for rnn in model.rnns
    ]
    twin = NextFrameModel(rnns, model.head.in_channels, channels_last=False,
                          device=model.head.weight.device)
    twin.norms.load_state_dict(model.norms.state_dict())
    twin.head.load_state_dict(model.head.state_dict())
    return twin


def next_frame_loss(model, frames):
    """Binary cross-entropy of the predictions of frames 1..T-1 from frames 0..T-2 (fp32)."""
    logits = model(frames[:, :-1])
    return F.binary_cross_entropy_with_logits(logits.float(), frames[:, 1:].float())


def _amp(autocast):
    return autocast() if autocast is not None else nullcontext()


def train_step(model, optimizer, frames, autocast=None):
    """One optimizer step on a batch of sequences (B, T, H, W); returns the loss (a detached
    0-dim tensor: reading it synchronizes). ``autocast``: None or a function returning an
    autocast context (``functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)``)."""
    with _amp(autocast):
        loss = next_frame_loss(model, frames)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)  # Keras' Adam epsilon


@torch.no_grad()
def evaluate(model, batches, autocast=None):
    """Mean next-frame loss over ``batches`` in eval mode (BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    try:
        with _amp(autocast):
            losses = [next_frame_loss(model, b).item() for b in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


@torch.no_grad()
def predict(model, frames, context, autocast=None):
    """Next-frame predictions (B, T-1, H, W) in [0, 1] for frames 1..T-1, and a rollout
    (B, T-context, H, W): frames ``context``..T-1 predicted from the first ``context`` frames
    alone, each prediction fed back as the next input (as the Keras example does)."""
    was_training = model.training
    model.eval()
    try:
        with _amp(autocast):
            one_step = torch.sigmoid(model(frames[:, :-1]).float())
            seq = frames[:, :context]
            for _ in range(frames.shape[1] - context):
                nxt = torch.sigmoid(model(seq)[:, -1:].float()).to(seq.dtype)
                seq = torch.cat([seq, nxt], dim=1)
    finally:
        model.train(was_training)
    return one_step, seq[:, context:]


# ---------------------------------------------------------------------------------------------
# progress and reports


def rate(frames_per_s):
    return f"{frames_per_s:,.0f}" if frames_per_s >= 100 else f"{frames_per_s:.3g}"


def log(message, end="\n"):
    print(message, file=sys.stderr, end=end, flush=True)


class Progress:
    """Progress on stderr: a tqdm bar (``mode`` "tqdm", or "auto" on a terminal when tqdm is
    installed), else plain lines ("plain"; updated in place on a terminal); "none": silent."""

    def __init__(self, total, desc, mode="auto", enabled=True):
        self.total, self.desc, self.done, self.bar = total, desc, 0, None
        self.enabled = enabled and mode != "none"
        self.tty = sys.stderr.isatty()
        # auto: a tqdm bar on a terminal; a log file gets plain lines (no carriage returns)
        if self.enabled and (mode == "tqdm" or (mode == "auto" and self.tty)):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr,
                                dynamic_ncols=True)
        self.every = max(1, total // 4)

    def update(self, loss=None, frames_per_s=None):
        self.done += 1
        if not self.enabled:
            return
        info = {}
        if loss is not None:
            info["last step loss"] = f"{loss:.4f}"
        if frames_per_s is not None:
            info["frames/s"] = rate(frames_per_s)
        if self.bar is not None:
            if info:
                self.bar.set_postfix(info, refresh=False)
            self.bar.update(1)
            return
        if self.tty or self.done % self.every == 0 or self.done == self.total:
            text = " ".join(f"{k} {v}" for k, v in info.items())
            line = f"{self.desc} {self.done}/{self.total} {text}"
            log(f"\r{line}" if self.tty else line, end="" if self.tty else "\n")

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty:
            log("")


def machine_info(device):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if device.type == "cuda":
        from bench_convlstm import machine_info as cuda_info
        from bench_convlstm import machine_line

        info = cuda_info()
        return info, machine_line(info)
    import triton

    cpu = platform.processor() or platform.machine()
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton.__version__, "date": now}
    line = (f"**CPU** ({cpu}, {info['cores']} cores, {info['threads']} torch threads) · "
            f"torch {info['torch']} · triton {info['triton']} · {now}")
    return info, line


def try_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def smooth(values, window):
    if window <= 1 or len(values) < window:
        return np.asarray(values)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_losses(plt, path, runs, title):
    """Loss curves (per step, smoothed, and validation per epoch), models overlaid; with several
    models a second panel with their time per epoch."""
    fig, axes = plt.subplots(1, 2 if len(runs) > 1 else 1, figsize=(11 if len(runs) > 1 else 7, 4),
                             squeeze=False)
    ax = axes[0][0]
    for i, run in enumerate(runs):
        color, style = f"C{i}", ("-", "--", ":", "-.")[i % 4]
        losses = run["step_losses"]
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, color=color, alpha=0.2, lw=0.8)
        window = max(1, len(losses) // 25)
        ax.plot(steps[window - 1:], smooth(losses, window), color=color, ls=style, lw=1.6,
                label=f"{run['model']} train")
        per_epoch = len(losses) // max(1, len(run["epochs"]))
        val = [(e["epoch"] * per_epoch, e["val_loss"]) for e in run["epochs"]]
        ax.plot(*zip(*val), "o", ls=style, color=color, ms=5 + 2 * (len(runs) - 1 - i),
                mfc="none" if i else color, label=f"{run['model']} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("binary cross-entropy")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if len(runs) > 1:
        ax = axes[0][1]
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            epochs = np.array([e["epoch"] for e in run["epochs"]])
            ax.bar(epochs + (i - (len(runs) - 1) / 2) * width, run["time_per_epoch_s"], width,
                   color=f"C{i}", label=f"{run['model']} (steady {run['steady_epoch_s']:.3g} s)")
        ax.set_xticks([e["epoch"] for e in runs[0]["epochs"]])
        ax.set_ylim(0, 1.3 * max(max(r["time_per_epoch_s"]) for r in runs))  # room for legend
        ax.set_xlabel("epoch")
        ax.set_ylabel("time per epoch (s)")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_predictions(plt, path, truth, rows, context, title):
    """truth (T, H, W); rows: (label, (T-1, H, W) next-frame predictions, (T-context, H, W)
    rollout) per model. Column t shows frame t (t >= 1)."""
    steps = truth.shape[0]
    labels = ["ground truth"]
    images = [list(truth[1:])]
    for name, one_step, rollout in rows:
        labels.append(f"{name}\nnext frame")
        images.append(list(one_step))
        labels.append(f"{name}\nrollout, t<{context} given")
        images.append([None] * (context - 1) + list(rollout))
    cols = steps - 1
    fig, axes = plt.subplots(len(images), cols, figsize=(0.9 * cols + 1.2, 1.0 * len(images)),
                             squeeze=False)
    for r, (label, row) in enumerate(zip(labels, images)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if row[c] is not None:
                ax.imshow(row[c], cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(f"t={c + 1}", fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        if row[0] is None:
            axes[r][0].axis("on")
            for spine in axes[r][0].spines.values():
                spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(path, config, runs):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for run in runs:
            for e in run["epochs"]:
                writer.writerow({
                    "model": run["model"], "epoch": e["epoch"], "steps": e["steps"],
                    "batch_size": config["batch_size"], "world_size": config["world_size"],
                    "seq_len": config["seq_len"], "size": config["size"],
                    "filters": config["filters"], "dtype": config["dtype"],
                    "train_loss": f"{e['train_loss']:.6g}", "val_loss": f"{e['val_loss']:.6g}",
                    "time_s": f"{e['time_s']:.4f}", "frames_per_s": f"{e['frames_per_s']:.1f}",
                    "data_wait_s": f"{e['data_wait_s']:.4f}",
                })


def write_json(path, payload):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def plural(count, noun):
    """'1 epoch', '3 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def steady_epoch_s(times):
    """The median epoch time, the first epoch left out when there are more."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def time_table(runs):
    lines = ["time per epoch (s)   " + "".join(f"{r['model']:>18}" for r in runs)]
    for i in range(max(len(r["epochs"]) for r in runs)):
        cells = "".join(f"{r['epochs'][i]['time_s']:>18.3f}" if i < len(r["epochs"])
                        else f"{'-':>18}" for r in runs)
        lines.append(f"epoch {i + 1:<15}{cells}")
    lines.append("steady (median)      " + "".join(f"{r['steady_epoch_s']:>18.3f}"
                                                  for r in runs))
    lines.append("frames/s (steady)    " + "".join(f"{rate(r['steady_frames_per_s']):>18}"
                                                  for r in runs))
    lines.append("final val loss       " + "".join(f"{r['epochs'][-1]['val_loss']:>18.4f}"
                                                  for r in runs))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# distributed


class Dist:
    """Rank, world size and device, from torchrun's environment variables."""

    def __init__(self, device_arg, threads=None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_arg == "cuda" or (device_arg is None and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda, but torch sees no CUDA GPU")
        if use_cuda:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world_size > 1
        if self.enabled:
            import torch.distributed as dist

            backend = "nccl" if use_cuda else "gloo"
            kwargs = {"device_id": self.device} if use_cuda else {}
            dist.init_process_group(backend=backend, **kwargs)
            if not use_cuda and threads is None:  # ranks share the cores
                local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
                threads = max(1, (os.cpu_count() or 1) // local)
        if threads is not None and not use_cuda:
            torch.set_num_threads(threads)

    @property
    def main(self):
        return self.rank == 0

    def mean(self, tensor):
        """The mean of ``tensor`` over ranks (itself without DDP)."""
        if not self.enabled:
            return tensor
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# command line


def _defaults(key):
    return f"GPU {GPU_DEFAULTS[key]}, CPU {CPU_DEFAULTS[key]}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("triton", "reference"),
                   help="our layers' backend (default: triton on CUDA, reference on CPU)")
    p.add_argument("--device", choices=("cuda", "cpu"),
                   help="default: cuda (cuda:LOCAL_RANK) if available")
    p.add_argument("--compare", action="store_true",
                   help="also train the eager ConvLSTM (bench/eager_convlstm.py), same init/data")
    p.add_argument("--peer", choices=tuple(PEERS), default="cat",
                   help="the eager peer for --compare: cat (one conv on cat(x, h) per step, "
                        "default) or hoisted (input conv of all frames first)")
    p.add_argument("--epochs", type=int, help=_defaults("epochs"))
    p.add_argument("--steps-per-epoch", type=int, help=_defaults("steps_per_epoch"))
    p.add_argument("--batch-size", type=int, help="per rank; " + _defaults("batch_size"))
    p.add_argument("--seq-len", type=int,
                   help="frames per sequence (the model runs on seq-len - 1 steps); "
                        + _defaults("seq_len") + "; with --data default the file's T")
    p.add_argument("--size", type=int, help="canvas height = width; " + _defaults("size"))
    p.add_argument("--filters", type=int,
                   help="filters of each ConvLSTM2D; " + _defaults("filters"))
    p.add_argument("--num-digits", type=int, default=2, help="digits per sequence (default 2)")
    p.add_argument("--digit-size", type=int,
                   help="digit height in pixels (default 7/16 of --size: 28 at 64)")
    p.add_argument("--train-size", type=int, default=10_000,
                   help="generated training sequences to draw from (default 10000)")
    p.add_argument("--data", metavar="PATH.npy",
                   help="(N, T, H, W) uint8 or [0, 1] float sequences instead of generated ones")
    p.add_argument("--val-batches", type=int, default=2,
                   help="validation batches evaluated after each epoch (default 2)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: torch.autocast mixed precision (default fp32)")
    p.add_argument("--warmup-steps", type=int,
                   help="untimed training steps on a copy of the model before epoch 1 (compile, "
                        "autotuning); " + _defaults("warmup_steps"))
    p.add_argument("--threads", type=int,
                   help="CPU: torch threads (default torch's: one per core; under torchrun "
                        "cores / local ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(BENCH / "results" / "train"),
                   help="output folder (default bench/results/train)")
    p.add_argument("--progress", choices=("auto", "tqdm", "plain", "none"), default="auto",
                   help="progress display on stderr (auto: a tqdm bar on a terminal if tqdm is "
                        "installed, else plain lines)")
    args = p.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size", "size", "filters", "num_digits",
                 "digit_size", "train_size", "val_batches", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.seq_len is not None and args.seq_len < 2:
        p.error("--seq-len must be >= 2 (inputs and next-frame targets)")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    return args


def resolve(args, dist):
    """Fill the device-dependent defaults; check the combination. Returns the config dict."""
    cuda = dist.device.type == "cuda"
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    args.size_given = args.size is not None
    for key, value in defaults.items():
        if key == "seq_len" and args.data:
            continue  # the file's T (make_data)
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.backend is None:
        args.backend = "triton" if cuda else "reference"
    if args.backend == "triton" and not cuda:
        from convlstm_triton.functional import triton_interpreter_enabled

        if not triton_interpreter_enabled():
            raise SystemExit("error: --backend triton needs a CUDA GPU (or TRITON_INTERPRET=1, "
                             "very slow); use --backend reference on a CPU")
    config = {k: v for k, v in vars(args).items() if k != "size_given"}
    config["world_size"] = dist.world_size
    config["device"] = str(dist.device)
    return config


def make_data(args):
    """(train set, validation set, description); sets args.seq_len/size from --data."""
    if args.data:
        ignored = [f"--{k.replace('_', '-')}" for k in ("num_digits", "digit_size")
                   if getattr(args, k) not in (None, 2)]
        if args.size_given:
            ignored.append("--size")
        if ignored:
            log(f"--data: ignoring {', '.join(ignored)} (frames come from the file)")
        array = load_array(args.data)
        n, steps, h, w = array.shape
        if args.seq_len is None or args.seq_len > steps:
            if args.seq_len is not None:
                log(f"--seq-len {args.seq_len} > the {steps} frames in {args.data}: using "
                    f"{steps}")
            args.seq_len = steps
        args.frame = (h, w)
        val_count = max(1, n // 10) if n > 1 else 0
        train = ArrayData(array, args.seq_len, np.arange(n - val_count))
        val = ArrayData(array, args.seq_len, np.arange(n - val_count, n) if val_count else [0])
        return train, val, (f"{args.data}: {n} sequences of {steps} frames {h}x{w} "
                            f"({array.dtype}), {len(train)} train / {len(val)} validation")
    glyphs, source = load_glyphs()
    args.frame = (args.size, args.size)
    digit = args.digit_size or max(4, args.size * 7 // 16)
    glyphs = upscale(glyphs, digit)
    train = MovingDigits(args.train_size, args.seq_len, args.size, glyphs, args.num_digits,
                         seed=args.seed)
    val = MovingDigits(max(args.val_batches * args.batch_size, 4), args.seq_len, args.size,
                       glyphs, args.num_digits, seed=args.seed + 1_000_003)
    gh, gw = glyphs.shape[1:]
    return train, val, (f"generated moving digits: {args.num_digits} digits of {gh}x{gw} "
                        f"from {source} on {args.size}x{args.size}, {args.seq_len} frames")


def to_device(array, device):
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


# ---------------------------------------------------------------------------------------------
# training


def warm_up(model, args, batch, autocast):
    """``args.warmup_steps`` steps on a copy of the model (compile, autotuning, cuDNN benchmark),
    then one evaluation forward: the timed epochs start warm and the model is untouched."""
    if args.warmup_steps <= 0:
        return 0.0
    start = time.perf_counter()
    twin = copy.deepcopy(model)
    optimizer = make_optimizer(twin, args.lr)
    for _ in range(args.warmup_steps):
        train_step(twin, optimizer, batch, autocast)
    evaluate(twin, [batch], autocast)
    if batch.is_cuda:
        torch.cuda.synchronize()
    del twin, optimizer
    return time.perf_counter() - start


def train_model(name, model, train, val_batches, args, dist, autocast, save):
    """Train one model for args.epochs; returns its run record. ``save(run)`` after each epoch."""
    device = dist.device
    first = to_device(train.batch(shard_indices(len(train), args.batch_size, 0, args.seed,
                                                dist.rank, dist.world_size)), device)
    warmup_s = warm_up(model, args, first, autocast)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                      else None)
    optimizer = make_optimizer(net, args.lr)
    frames_per_step = args.batch_size * dist.world_size * (args.seq_len - 1)
    run = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
           "warmup_s": warmup_s, "epochs": [], "step_losses": []}
    if dist.main and warmup_s:
        log(f"[{name}] warm-up: {args.warmup_steps} step(s) in {warmup_s:.2f} s (compile, "
            "autotuning; not timed)")
    refresh = max(1, args.steps_per_epoch // 20)
    for epoch in range(args.epochs):
        indices = shard_indices(len(train), args.steps_per_epoch * args.batch_size, epoch,
                                args.seed, dist.rank, dist.world_size)
        batches = [indices[s * args.batch_size:(s + 1) * args.batch_size]
                   for s in range(args.steps_per_epoch)]
        make_batch = functools.partial(
            train.batch, rng=np.random.default_rng([args.seed, epoch, 99, dist.rank]))
        progress = Progress(args.steps_per_epoch, f"[{name}] epoch {epoch + 1}/{args.epochs}",
                            args.progress, enabled=dist.main)
        losses, data_wait = [], 0.0
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step, (batch, waited) in enumerate(
                prefetch(make_batch, batches)):
            data_wait += waited
            frames = to_device(batch, device)
            losses.append(train_step(net, optimizer, frames, autocast))
            if (step + 1) % refresh == 0 or step + 1 == args.steps_per_epoch:
                loss = losses[-1].item()  # synchronizes
                elapsed = time.perf_counter() - start
                progress.update(loss, (step + 1) * frames_per_step / elapsed)
            else:
                progress.update()
        step_losses = dist.mean(torch.stack(losses).float())
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        progress.close()
        step_losses = step_losses.cpu().tolist()
        val_loss = evaluate(model, val_batches, autocast) if dist.main else float("nan")
        record = {"epoch": epoch + 1, "steps": args.steps_per_epoch,
                  "train_loss": sum(step_losses) / len(step_losses), "val_loss": val_loss,
                  "time_s": elapsed, "frames_per_s": frames_per_step * args.steps_per_epoch
                  / elapsed, "data_wait_s": data_wait}
        bad = [v for v in step_losses if not math.isfinite(v)]
        run["epochs"].append(record)
        run["step_losses"].extend(step_losses)
        times = [e["time_s"] for e in run["epochs"]]
        run["time_per_epoch_s"] = times
        run["steady_epoch_s"] = steady_epoch_s(times)
        run["steady_frames_per_s"] = (frames_per_step * args.steps_per_epoch
                                      / run["steady_epoch_s"])
        if dist.main:
            print(f"[{name}] epoch {epoch + 1}/{args.epochs}: mean loss "
                  f"{record['train_loss']:.4f}  "
                  f"val {val_loss:.4f}  {elapsed:.2f} s  "
                  f"{rate(record['frames_per_s'])} frames/s"
                  + (f"  (data wait {data_wait:.2f} s)" if data_wait > 0.05 * elapsed else ""),
                  flush=True)
            save(run)
        if bad:
            raise FloatingPointError(f"[{name}] non-finite training loss in epoch {epoch + 1}")
    return run


def report(args, config, runs, val_sample, preds, machine_line, out):
    """Final files of rank 0: plots (if matplotlib is there) and the time table."""
    plt = try_pyplot()
    files = {"metrics": str(out / "metrics.json"), "csv": str(out / "epochs.csv")}
    frame = "x".join(map(str, args.frame))
    title = (f"{machine_line.replace('**', '')}\nB={args.batch_size}x{config['world_size']} "
             f"T={args.seq_len - 1} {frame} F={args.filters} {args.dtype}")
    if plt is None:
        log("matplotlib is not installed: skipping loss.png and predictions.png "
            "(pip install matplotlib)")
    else:
        plot_losses(plt, out / "loss.png", runs, title)
        context = max(1, args.seq_len // 2)
        rows = [(run["model"], one_step[0].numpy(), rollout[0].numpy())
                for run, (one_step, rollout) in zip(runs, preds)]
        plot_predictions(plt, out / "predictions.png", val_sample[0].numpy(), rows, context,
                         title)
        files.update(loss_plot=str(out / "loss.png"), predictions=str(out / "predictions.png"))
    print()
    print(time_table(runs))
    if len(runs) == 2:
        ours, peer = runs
        ratio = peer["steady_epoch_s"] / ours["steady_epoch_s"]
        print(f"speed-up of {ours['model']} over {peer['model']}: {ratio:.2f}x (steady epoch "
              f"time of {peer['model']} / {ours['model']}; > 1: ours is faster)")
    print("wrote " + ", ".join(files.values()))
    return files


def main(argv=None):
    args = parse_args(argv)
    dist = Dist(args.device, args.threads)
    try:
        return _main(args, dist)
    finally:
        dist.close()


def _main(args, dist):
    device = dist.device
    config = resolve(args, dist)
    train, val, data_text = make_data(args)
    config.update(seq_len=args.seq_len, size="x".join(map(str, args.frame)),
                  data_description=data_text)
    autocast = None  # a fresh autocast context per use
    if args.dtype == "bf16":
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the eager peer's best algorithms (and Conv3d's)
    out = Path(args.out)
    info, line = machine_info(device)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        print(line)
        print(f"data: {data_text}")
        print(f"model: ConvLSTM2D x3 (k={','.join(map(str, KERNEL_SIZES))}, F={args.filters}, "
              f"relu) + BatchNorm + Conv3D; {args.seq_len - 1} steps; batch {args.batch_size}"
              f" x {dist.world_size} rank(s); {plural(args.epochs, 'epoch')} x "
              f"{plural(args.steps_per_epoch, 'step')}; {args.dtype}; ours: "
              f"backend={args.backend}", flush=True)

    val_indices = list(range(len(val)))[: args.val_batches * args.batch_size]
    val_batches = [to_device(val.batch(val_indices[i:i + args.batch_size]), device)
                   for i in range(0, len(val_indices), args.batch_size)]
    model = build_model(args.filters, args.backend, device, args.seed)
    models = [(f"ours_{args.backend}", model)]
    if args.compare:
        models.append((f"eager_{args.peer}", eager_twin(model, args.peer)))

    payload = {"config": config, "machine": info, "machine_line": line, "runs": []}
    runs = []

    def save(run):
        write_json(out / "metrics.json", {**payload, "runs": runs + [run]})
        write_csv(out / "epochs.csv", config, runs + [run])

    preds = []
    sample = val_batches[0][:1]
    for name, m in models:
        run = train_model(name, m, train, val_batches, args, dist, autocast, save)
        runs.append(run)
        if dist.main:
            one_step, rollout = predict(m, sample, max(1, args.seq_len // 2), autocast)
            preds.append((one_step.float().cpu(), rollout.float().cpu()))
        dist.barrier()
    if dist.main:
        if len(runs) == 2:
            payload["speedup"] = {  # > 1: ours is faster
                "peer": runs[1]["model"],
                "steady_epoch_time_ratio": runs[1]["steady_epoch_s"] / runs[0]["steady_epoch_s"]}
        payload["files"] = report(args, config, runs, sample.float().cpu(), preds, line, out)
        payload["runs"] = runs
        write_json(out / "metrics.json", payload)
        write_csv(out / "epochs.csv", config, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
