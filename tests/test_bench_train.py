"""bench/train.py on a CPU: the moving-digits generator, the data sharding, the model (ours and its
eager twin), a loss that goes down, and the script end to end in subprocesses (a run, --compare,
two DDP ranks over gloo), on tiny configs with --data (no scikit-learn, tqdm or matplotlib
needed). bench/ is not a package: import from there."""

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import train  # noqa: E402

TINY = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2", "--seq-len", "4",
        "--filters", "4", "--backend", "reference", "--progress", "plain", "--val-batches", "1"]


def _glyphs(size=6):
    return train.upscale(train.font_glyphs(), size)


def _frames(n=12, steps=5, size=12, seed=0):
    return train.MovingDigits(n, steps, size, _glyphs(), num_digits=2, seed=seed).batch(range(n))


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "seqs.npy"
    np.save(path, (_frames(n=12, steps=6, size=16) * 255).round().astype(np.uint8))
    return path


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    env.update(extra)
    return env


def _run(args, **env):
    return subprocess.run([sys.executable, str(BENCH / "train.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=_env(**env))


# ---------------------------------------------------------------------------------------------
# data


def test_moving_digits_shapes_values_and_motion():
    glyphs = _glyphs(6)
    assert glyphs.shape == (10, 6, 4) and glyphs.min() >= 0 and glyphs.max() <= 1
    data = train.MovingDigits(50, 12, 16, glyphs, num_digits=1, seed=3)
    batch = data.batch([0, 7, 49])
    assert batch.shape == (3, 12, 16, 16) and batch.dtype == np.float32
    assert batch.min() >= 0 and batch.max() <= 1
    ys, xs = np.mgrid[:16, :16]
    for seq in batch:
        # one digit, always wholly on the canvas (it bounces): the same ink in every frame
        ink = seq.sum(axis=(1, 2))
        assert ink.min() > 0 and np.allclose(ink, ink[0])
        centres = np.stack([(seq * ys).sum((1, 2)) / ink, (seq * xs).sum((1, 2)) / ink], 1)
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        # it moves: 0.5 to 1.5 px/frame at this size, on whole pixels
        assert steps.sum() >= 4 and (steps > 0).sum() >= 5
    # a pure function of (seed, index)
    assert np.array_equal(data.sequence(7), batch[1])
    assert not np.array_equal(data.sequence(8), batch[1])
    other_seed = train.MovingDigits(50, 12, 16, glyphs, num_digits=1, seed=4)
    assert not np.array_equal(other_seed.sequence(7), batch[1])
    two = train.MovingDigits(4, 5, 16, glyphs, num_digits=2).batch(range(4))
    assert two.shape == (4, 5, 16, 16) and two.max() <= 1


def test_bounces_keep_every_digit_on_a_small_canvas():
    glyphs = _glyphs(7)  # 7x5 on 9x9: little room, many bounces
    data = train.MovingDigits(20, 30, 9, glyphs, num_digits=1, seed=1)
    for i in range(20):
        ink = data.sequence(i).sum(axis=(1, 2))
        assert np.allclose(ink, ink[0])
    with pytest.raises(ValueError, match="do not fit"):
        train.MovingDigits(1, 2, 6, glyphs)


def test_sklearn_digits_when_installed():
    pytest.importorskip("sklearn")
    glyphs, text = train.load_glyphs("sklearn")
    assert glyphs.shape == (1797, 8, 8) and glyphs.min() == 0 and glyphs.max() == 1
    assert "load_digits" in text
    assert train.upscale(glyphs[:3], 16).shape == (3, 16, 16)


def test_array_data_scales_windows_and_validates(tmp_path):
    frames = (_frames(n=4, steps=6) * 255).round().astype(np.uint8)
    path = tmp_path / "a.npy"
    np.save(path, frames[..., None])  # (N, T, H, W, 1) is accepted too
    array = train.load_array(path)
    assert array.shape == (4, 6, 12, 12)
    data = train.ArrayData(array, 4, indices=[1, 3])
    first = data.batch([0, 1])
    assert first.shape == (2, 4, 12, 12) and first.dtype == np.float32
    assert np.allclose(first, frames[[1, 3], :4] / 255)
    windows = data.batch([0] * 8, rng=np.random.default_rng(0))
    starts = {next(s for s in range(3) if np.allclose(w, frames[1, s:s + 4] / 255))
              for w in windows}
    assert len(starts) > 1  # random windows of the longer sequences
    np.save(path, np.full((2, 3, 4, 4), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train.load_array(path)
    np.save(path, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        train.load_array(path)


def test_shard_indices_split_like_distributed_sampler():
    ranks = [train.shard_indices(10, 5, epoch=0, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert sorted(ranks[0] + ranks[1]) == list(range(10))  # disjoint, together one permutation
    assert ranks[0] == train.shard_indices(10, 5, epoch=0, seed=1, rank=0, world_size=2)
    assert ranks[0] != train.shard_indices(10, 5, epoch=1, seed=1, rank=0, world_size=2)
    more = train.shard_indices(4, 7, epoch=0, seed=0)  # past one permutation: the next one
    assert len(more) == 7 and sorted(more[:4]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# model


def _tiny_model(filters=4, seed=0):
    return train.build_model(filters, "reference", torch.device("cpu"), seed)


def test_model_shapes_and_keras_structure():
    model = _tiny_model()
    assert [rnn.kernel_size for rnn in model.rnns] == [(5, 5), (3, 3), (1, 1)]
    assert all(rnn.activation == "relu" and rnn.return_sequences for rnn in model.rnns)
    assert len(model.norms) == 2 and model.head.kernel_size == (3, 3, 3)
    frames = torch.from_numpy(_frames(n=2, steps=5))
    logits = model(frames[:, :-1])
    assert logits.shape == (2, 4, 12, 12)
    one_step, rollout = train.predict(model, frames, context=2)
    assert one_step.shape == (2, 4, 12, 12) and rollout.shape == (2, 3, 12, 12)
    assert 0 <= one_step.min() and one_step.max() <= 1
    assert model.training  # predict and evaluate restore the mode


def test_eager_twin_has_the_same_function_and_gradients():
    """--compare's "same init": the eager model computes the same loss and, after one step on
    the same batch, still the same loss."""
    torch.set_default_dtype(torch.float64)
    try:
        ours = _tiny_model()
        for peer in ("cat", "hoisted"):
            twin = train.eager_twin(ours, peer)
            frames = torch.from_numpy(_frames(n=2, steps=4)).double()
            a, b = (train.next_frame_loss(m, frames) for m in (ours, twin))
            assert a.item() == pytest.approx(b.item(), rel=1e-12)
        a_model, b_model = _tiny_model(), train.eager_twin(_tiny_model(), "cat")
        opts = [train.make_optimizer(m, 1e-2) for m in (a_model, b_model)]
        for m, opt in zip((a_model, b_model), opts):
            train.train_step(m, opt, frames)
        a, b = (train.next_frame_loss(m, frames) for m in (a_model, b_model))
        assert a.item() == pytest.approx(b.item(), rel=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_loss_goes_down_on_a_repeated_batch():
    model = _tiny_model(seed=1)
    optimizer = train.make_optimizer(model, 1e-2)
    frames = torch.from_numpy(_frames(n=2, steps=5, seed=2))
    losses = [train.train_step(model, optimizer, frames).item() for _ in range(25)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_the_models_layers_follow_autocast_and_keep_fp32_gradients():
    layer = train.build_model(3, "reference", "cpu", 0).rnns[0]  # the library's ConvLSTM2D
    x = torch.randn(2, 3, 5, 5, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.kernel.grad is not None and layer.kernel.grad.dtype == torch.float32
    assert layer(x).dtype == torch.float32  # no autocast: the plain layer


# ---------------------------------------------------------------------------------------------
# the script


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _csv_rows(out):
    with open(out / "epochs.csv") as f:
        return list(csv.DictReader(f))


def _check_plots(result, out):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in result.stderr
    else:
        assert (out / "loss.png").stat().st_size > 0
        assert (out / "predictions.png").stat().st_size > 0


def test_script_trains_and_writes_metrics(tmp_path, data_file):
    out = tmp_path / "out"
    result = _run([*TINY, "--data", data_file, "--out", out])
    assert result.returncode == 0, result.stderr
    # the plain progress line
    assert "[ours_reference] epoch 1/1 3/3 last step loss" in result.stderr
    assert "time per epoch" in result.stdout
    metrics = _metrics(out)
    assert metrics["config"]["backend"] == "reference" and metrics["config"]["world_size"] == 1
    assert "11 train / 1 validation" in metrics["config"]["data_description"]
    (run,) = metrics["runs"]
    assert run["model"] == "ours_reference" and len(run["step_losses"]) == 3
    assert all(math.isfinite(v) and 0 < v < 2 for v in run["step_losses"])
    (epoch,) = run["epochs"]
    assert epoch["time_s"] > 0 and epoch["frames_per_s"] > 0
    assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["val_loss"])
    assert run["time_per_epoch_s"] == [epoch["time_s"]]
    (row,) = _csv_rows(out)
    assert row["model"] == "ours_reference" and float(row["time_s"]) > 0
    assert row["size"] == "16x16" and row["seq_len"] == "4"
    _check_plots(result, out)


def test_script_compare_trains_the_eager_peer_on_the_same_start(tmp_path, data_file):
    out = tmp_path / "out"
    result = _run([*TINY, "--data", data_file, "--out", out, "--compare", "--epochs", "2",
                   "--steps-per-epoch", "2", "--warmup-steps", "1"])
    assert result.returncode == 0, result.stderr
    assert "speed-up of ours_reference over eager_cat" in result.stdout
    metrics = _metrics(out)
    ours, eager = metrics["runs"]
    assert eager["model"] == "eager_cat" and eager["parameters"] == ours["parameters"]
    # same weights, same batches, float32 on the same machine: the same losses
    assert np.allclose(ours["step_losses"], eager["step_losses"], rtol=1e-4)
    assert len(eager["time_per_epoch_s"]) == 2 and eager["steady_epoch_s"] > 0
    assert metrics["speedup"]["peer"] == "eager_cat"
    assert [r["model"] for r in _csv_rows(out)] == ["ours_reference"] * 2 + ["eager_cat"] * 2
    _check_plots(result, out)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_script_ddp_two_ranks_without_torchrun(tmp_path, data_file):
    """What torchrun sets, set by hand: two ranks over gloo; only rank 0 writes."""
    out = tmp_path / "out"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "train.py"), *TINY, "--data", str(data_file),
             "--out", str(out), "--steps-per-epoch", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                     LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        try:
            results.append(proc.communicate(timeout=90))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr
    assert "time per epoch" in results[0][0] and results[1][0] == ""  # rank 1 prints nothing
    metrics = _metrics(out)
    assert metrics["config"]["world_size"] == 2
    (run,) = metrics["runs"]
    assert len(run["step_losses"]) == 2 and all(math.isfinite(v) for v in run["step_losses"])
    # frames/s counts both ranks: 2 steps x 2 sequences x 2 ranks x 3 frames
    epoch = run["epochs"][0]
    assert epoch["frames_per_s"] == pytest.approx(24 / epoch["time_s"])


def test_main_bf16_autocast_in_process(tmp_path, data_file, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    assert train.main([*TINY, "--data", str(data_file), "--out", str(out), "--dtype", "bf16",
                       "--steps-per-epoch", "2", "--progress", "none"]) == 0
    (run,) = _metrics(out)["runs"]
    assert _metrics(out)["config"]["dtype"] == "bf16"
    assert all(math.isfinite(v) for v in run["step_losses"])
    assert "time per epoch" in capsys.readouterr().out


def test_script_rejects_triton_without_a_gpu_and_bad_arguments(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the message shown without a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        train.main(["--backend", "triton"])
    for bad in (["--seq-len", "1"], ["--epochs", "0"], ["--dtype", "fp16"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
    capsys.readouterr()


def test_reference_cpu_times_ours_and_the_eager_twin_alternately(capsys):
    """bench/reference_cpu.py: one step of each model per round on the same batch, and a line
    per thread count with both medians and their ratio."""
    import reference_cpu

    times = reference_cpu.time_steps(1, 2, "cat", batch=2, frames=4, size=12, filters=4)
    assert list(times) == ["ours", "eager_cat"]
    assert all(len(t) == 2 and all(ms > 0 for ms in t) for t in times.values())
    reference_cpu.main(["--threads", "1", "--rounds", "1", "--peer", "hoisted"])
    out = capsys.readouterr().out
    assert "threads 1: ours" in out and "the speed of eager_hoisted" in out
    with pytest.raises(SystemExit):
        reference_cpu.main(["--rounds", "0"])
