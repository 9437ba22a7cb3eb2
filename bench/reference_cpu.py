"""The reference path on a CPU against the eager ConvLSTM, side by side in one process.

    python bench/reference_cpu.py                 # bench/train.py's CPU model, 1 and 2 threads
    python bench/reference_cpu.py --threads 2 --rounds 20

One training step (forward, loss, backward, Adam) of ``bench/train.py``'s model (three
``ConvLSTM2D``, k = 5, 3, 1, F = 16, ReLU, BatchNorm, Conv3D head; batch 8, 24×24, 9 steps,
fp32) with our layers on ``backend="reference"`` and with its eager twin (``--peer``: one conv
of cat(x_t, h) per step, or the hoisted eager loop), the same weights and a fresh random batch
per round. The two are timed in alternation, round after round, so that a machine whose speed
drifts (a shared VM) slows both alike: ``bench/train.py --compare`` trains one model after the
other and reads that drift as a difference. Prints the median and best step time of each and
their ratio (> 1: ours is faster).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (bench/train.py: the model, its eager twin, the training step)


def time_steps(threads, rounds, peer, batch=8, frames=10, size=24, filters=16, seed=0):
    """{"ours": [ms...], peer: [ms...]}: one training step each per round, alternating."""
    torch.set_num_threads(threads)
    model = train.build_model(filters, "reference", "cpu", seed)
    twin = train.eager_twin(model, peer)
    runs = {"ours": (model, train.make_optimizer(model, 1e-3)),
            f"eager_{peer}": (twin, train.make_optimizer(twin, 1e-3))}
    g = torch.Generator().manual_seed(seed)
    times = {name: [] for name in runs}
    for r in range(rounds + 2):  # two warm-up rounds
        batch_frames = (torch.rand(batch, frames, size, size, generator=g) > 0.8).float()
        for name, (m, opt) in runs.items():
            start = time.perf_counter()
            train.train_step(m, opt, batch_frames)
            if r >= 2:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--peer", choices=("cat", "hoisted"), default="cat")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    print(f"torch {torch.__version__}, one training step of bench/train.py's CPU model, "
          f"ms (median / best of {args.rounds})")
    for threads in (int(t) for t in args.threads.split(",")):
        times = time_steps(threads, args.rounds, args.peer)
        (ours, ours_t), (peer, peer_t) = times.items()
        ratio = statistics.median(peer_t) / statistics.median(ours_t)
        print(f"threads {threads}: {ours} {statistics.median(ours_t):.1f} / {min(ours_t):.1f}, "
              f"{peer} {statistics.median(peer_t):.1f} / {min(peer_t):.1f}; "
              f"ours {ratio:.2f}x the speed of {peer}")


if __name__ == "__main__":
    main()
