"""The tuning cache (convlstm_triton/tuning.py) on the CPU.

Benchmarking needs a GPU, so these tests switch it on by monkeypatching ``_tuning_enabled`` and
replace ``_benchmark`` (do_bench, or the warm-L2 timer) with fake timings; everything else
(choice, memory and disk cache, merging, bad files) is the real code. The warm-L2 timer itself
runs for real against a fake GPU clock (fake CUDA events, synchronize and sleep).
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import triton

from convlstm_triton import tune_ahead, tuning

CONFIGS = [
    {"BLOCK_M": 64, "BLOCK_F": 32, "BLOCK_K": 32, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_F": 32, "BLOCK_K": 32, "num_warps": 8},
    {"BLOCK_M": 32, "BLOCK_F": 16, "BLOCK_K": 64, "num_warps": 4},
]
KEY = (4096, 64, 3, 3, 1, "bfloat16", True)
DEVICE = "cpu"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh process's view: empty memory cache and log, the cache dir under tmp_path."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(path))
    monkeypatch.delenv("CONVLSTM_TRITON_AUTOTUNE", raising=False)
    tuning._reset_state()
    yield path
    tuning._reset_state()


class FakeBench:
    """Stands in for do_bench: ms per BLOCK_M (an exception instance: that config raises)."""

    def __init__(self, times):
        self.times = times
        self.calls = []
        self.modes = []  # the timing mode of each call

    def __call__(self, run, cfg):
        self.calls.append(cfg["BLOCK_M"])
        self.modes.append(tuning._current_timing())
        run(cfg)
        t = self.times[cfg["BLOCK_M"]]
        if isinstance(t, Exception):
            raise t
        return t


@pytest.fixture
def fake_bench(monkeypatch, cache_dir):
    """Tuning on (as on a GPU), timed by a FakeBench: 128 fastest."""
    bench = FakeBench({64: 2.0, 128: 1.0, 32: 3.0})
    monkeypatch.setattr(tuning, "_tuning_enabled", lambda device: True)
    monkeypatch.setattr(tuning, "_benchmark", bench)
    return bench


def no_benchmark(run, cfg):
    raise AssertionError("benchmarked, but the config should have come from a cache")


def pick(key=KEY, configs=CONFIGS, ran=None, **kwargs):
    def run(cfg):
        if ran is not None:
            ran.append(cfg)

    return tuning.pick_config("step_forward", key, configs, run, DEVICE, **kwargs)


def read_cache():
    with open(tuning.cache_path(DEVICE)) as f:
        return json.load(f)


def header(**overrides):
    data = {"schema": tuning.SCHEMA_VERSION, "device": "cpu", "triton": triton.__version__,
            "torch": torch.__version__, "entries": {}}
    data.update(overrides)
    return data


def new_process(monkeypatch, benchmark=no_benchmark):
    """Forget what this process tuned, as a second process would start."""
    tuning._reset_state()
    monkeypatch.setattr(tuning, "_benchmark", benchmark)


# ---------------------------------------------------------------------------------------------
# choosing and persisting


def test_bucket_is_next_power_of_two():
    assert [tuning.bucket(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
        1, 1, 2, 4, 4, 8, 1024, 1024, 2048]


def test_chooses_fastest_and_persists(fake_bench, cache_dir):
    ran = []
    chosen = pick(ran=ran, flop=1e9)
    assert chosen is CONFIGS[1]
    assert fake_bench.calls == [64, 128, 32]
    assert ran == CONFIGS  # run() got each candidate config

    path = tuning.cache_path(DEVICE)
    assert os.path.dirname(path) == str(cache_dir)
    assert os.path.basename(path).startswith("tuning-cpu-triton")
    data = read_cache()
    assert data["schema"] == tuning.SCHEMA_VERSION and data["device"] == "cpu"
    assert data["triton"] == triton.__version__ and data["torch"] == torch.__version__
    entry = data["entries"][f"step_forward|{KEY!r}"]
    assert entry["config"] == CONFIGS[1] and entry["flop"] == 1e9
    assert [t["ms"] for t in entry["trials"]] == [2.0, 1.0, 3.0]
    assert tuning.cached_entries(DEVICE) == data["entries"]
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]

    # A memory hit: no benchmark, no new log event.
    assert pick() is CONFIGS[1]
    assert fake_bench.calls == [64, 128, 32]
    (event,) = tuning.tuning_log()
    assert event["source"] == "tuned" and event["chosen"] == CONFIGS[1]
    assert event["key"] == repr(KEY) and event["flop"] == 1e9
    assert [t["ms"] for t in event["trials"]] == [2.0, 1.0, 3.0]


def test_keys_and_kernels_are_separate(fake_bench):
    assert pick() is CONFIGS[1]
    fake_bench.times = {64: 1.0, 128: 2.0, 32: 3.0}
    assert pick(key=KEY[:-1] + (False,)) is CONFIGS[0]
    assert tuning.pick_config("input_grad", KEY, CONFIGS, lambda cfg: None, DEVICE) is CONFIGS[0]
    assert pick() is CONFIGS[1]
    assert len(tuning.cached_entries(DEVICE)) == 3


def test_skips_failing_configs(fake_bench):
    fake_bench.times[128] = RuntimeError("out of resources: shared memory\nmore detail")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one failing config is normal: no warning
        assert pick() is CONFIGS[0]
    trials = read_cache()["entries"][f"step_forward|{KEY!r}"]["trials"]
    assert trials[1]["ms"] is None
    assert trials[1]["error"] == "RuntimeError: out of resources: shared memory"
    assert trials[0] == {"config": CONFIGS[0], "ms": 2.0, "error": None}
    assert tuning.tuning_log()[0]["trials"][1]["error"].startswith("RuntimeError")


def test_every_config_failing_gives_default_kept_in_memory_only(fake_bench, monkeypatch):
    fake_bench.times = {m: ValueError("boom") for m in (64, 128, 32)}
    with pytest.warns(RuntimeWarning, match="every config of step_forward failed"):
        assert pick() is CONFIGS[0]
    assert not os.path.exists(tuning.cache_path(DEVICE))
    assert tuning.tuning_log()[-1]["source"] == "failed"
    assert pick() is CONFIGS[0]  # not tuned again in this process
    assert fake_bench.calls == [64, 128, 32]
    bench = FakeBench({64: 2.0, 128: 1.0, 32: 3.0})
    new_process(monkeypatch, bench)  # but a new process tries again
    assert pick() is CONFIGS[1]


def test_non_finite_time_counts_as_failure(fake_bench):
    fake_bench.times[128] = float("nan")
    assert pick() is CONFIGS[0]


def test_second_process_hits_disk(fake_bench, monkeypatch):
    assert pick(flop=5.0) is CONFIGS[1]
    new_process(monkeypatch)
    # Equal but not identical candidate dicts: the returned config is the caller's own element.
    configs = [dict(c) for c in CONFIGS]
    assert pick(configs=configs) is configs[1]
    (event,) = tuning.tuning_log()
    assert event["source"] == "disk" and event["chosen"] == CONFIGS[1] and event["flop"] == 5.0
    assert [t["ms"] for t in event["trials"]] == [2.0, 1.0, 3.0]
    assert pick(configs=configs) is configs[1]  # and now from memory
    assert len(tuning.tuning_log()) == 1


def test_entry_whose_config_is_no_longer_a_candidate_is_retuned(fake_bench, monkeypatch):
    assert pick() is CONFIGS[1]
    bench = FakeBench({64: 2.0, 256: 0.5, 32: 3.0})
    new_process(monkeypatch, bench)
    configs = [CONFIGS[0], dict(CONFIGS[1], BLOCK_M=256), CONFIGS[2]]
    assert pick(configs=configs) is configs[1]
    assert bench.calls == [64, 256, 32]
    assert read_cache()["entries"][f"step_forward|{KEY!r}"]["config"]["BLOCK_M"] == 256


def test_clear_cache_deletes_file_and_memory(fake_bench):
    pick()
    tuning.clear_cache(DEVICE)
    assert not os.path.exists(tuning.cache_path(DEVICE))
    assert tuning.cached_entries(DEVICE) == {}
    pick()
    assert fake_bench.calls == [64, 128, 32] * 2


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVLSTM_TRITON_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert os.path.dirname(tuning.cache_path("cpu")) == str(tmp_path / "xdg" / "convlstm_triton")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert os.path.dirname(tuning.cache_path("cpu")) == str(
        tmp_path / "home" / ".cache" / "convlstm_triton")


# ---------------------------------------------------------------------------------------------
# bad cache files


BAD_FILES = [
    pytest.param("{ not json", "not valid JSON", id="corrupt_json"),
    pytest.param("", "not valid JSON", id="empty"),
    pytest.param(json.dumps(header(schema=0)), "schema 0", id="stale_schema"),
    pytest.param(json.dumps(header(triton="0.0.1")), "triton", id="other_triton"),
    pytest.param(json.dumps(header(device="NVIDIA A100")), "device", id="other_device"),
    pytest.param(json.dumps(header(entries=[])), "not a tuning cache", id="entries_list"),
    pytest.param(json.dumps([1, 2]), "not a tuning cache", id="top_level_list"),
    # nested too deep for json's recursion: RecursionError, not ValueError
    pytest.param("[" * 100000 + "]" * 100000, "not valid JSON", id="nested_too_deep"),
    pytest.param(json.dumps(header(entries={f"step_forward|{KEY!r}": {
        "config": [64, 32], "trials": []}})), "invalid entries", id="config_not_dict"),
    pytest.param(json.dumps(header(entries={f"step_forward|{KEY!r}": {
        "config": CONFIGS[0], "trials": [{"config": CONFIGS[0], "ms": "fast"}]}})),
        "invalid entries", id="ms_string"),
    pytest.param(json.dumps(header(entries={f"step_forward|{KEY!r}": {
        "config": CONFIGS[0], "timing": 5, "trials": []}})), "invalid entries",
        id="timing_not_str"),
]


@pytest.mark.parametrize("content,reason", BAD_FILES)
def test_bad_file_is_ignored_with_one_warning_and_rewritten(fake_bench, content, reason):
    path = tuning.cache_path(DEVICE)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pick() is CONFIGS[1]  # retuned: the bad entry (if any) is not trusted
        assert pick(key=KEY[:-1] + (False,)) is CONFIGS[1]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and reason in messages[0] and "ignoring" in messages[0]
    assert fake_bench.calls == [64, 128, 32] * 2
    data = read_cache()
    assert data["schema"] == tuning.SCHEMA_VERSION and data["triton"] == triton.__version__
    assert set(data["entries"]) == {f"step_forward|{KEY!r}",
                                    f"step_forward|{KEY[:-1] + (False,)!r}"}


def test_invalid_entry_dropped_valid_entry_kept(fake_bench, monkeypatch):
    pick()
    data = read_cache()
    data["entries"]["input_grad|(1,)"] = {"config": {"BLOCK_M": None}, "trials": []}
    with open(tuning.cache_path(DEVICE), "w") as f:
        json.dump(data, f)
    new_process(monkeypatch)
    with pytest.warns(RuntimeWarning, match="1 invalid entries dropped"):
        assert pick() is CONFIGS[1]


def test_unwritable_cache_dir_tunes_in_memory_with_one_warning(fake_bench, monkeypatch,
                                                               tmp_path):
    # A path below a regular file can never be created, even by root (chmod does not stop root).
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(blocker / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pick() is CONFIGS[1]
        assert pick(key=KEY[:-1] + (False,)) is CONFIGS[1]
        assert pick() is CONFIGS[1]  # memory hit
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "memory only" in messages[0]
    assert fake_bench.calls == [64, 128, 32] * 2
    assert tuning.cached_entries(DEVICE) == {}
    assert blocker.read_text() == "not a directory"


def test_cache_dir_that_is_a_file_tunes_in_memory(fake_bench, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="memory only"):
        assert pick() is CONFIGS[1]


def test_lock_held_too_long_keeps_the_entry_in_memory_with_one_warning(fake_bench,
                                                                         monkeypatch):
    """A writer frozen while holding the lock (here: this process holds it on another open
    file, which flock refuses as another process would) does not block tuning: the write gives
    up after LOCK_TIMEOUT_S, the entry is kept in memory, one warning."""
    import fcntl

    monkeypatch.setattr(tuning, "LOCK_TIMEOUT_S", 0.2)
    path = tuning.cache_path(DEVICE)
    os.makedirs(os.path.dirname(path))
    with open(path + ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.monotonic()
            assert pick() is CONFIGS[1]
            assert pick(key=KEY[:-1] + (False,)) is CONFIGS[1]
            assert time.monotonic() - start < 60  # bounded (a hang would be forever)
        assert pick() is CONFIGS[1]  # a memory hit
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "memory only" in messages[0] and "lock" in messages[0]
    assert fake_bench.calls == [64, 128, 32] * 2
    assert not os.path.exists(path)
    pick(key=KEY[:-1] + (True, 1))  # the lock is free again: written
    assert len(read_cache()["entries"]) == 1


def test_stale_temp_files_are_removed_and_the_cache_takes_the_umask(fake_bench):
    path = tuning.cache_path(DEVICE)
    directory = os.path.dirname(path)
    os.makedirs(directory)
    stale, fresh = (os.path.join(directory, f".tuning-{n}.tmp") for n in ("old", "new"))
    for name in (stale, fresh):
        with open(name, "w") as f:
            f.write("{")
    old = time.time() - tuning.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    previous = os.umask(0o022)
    try:
        pick()
    finally:
        os.umask(previous)
    assert not os.path.exists(stale) and os.path.exists(fresh)  # fresh: a writer may own it
    assert os.stat(path).st_mode & 0o777 == 0o644  # mkstemp's 0600 no more


# ---------------------------------------------------------------------------------------------
# concurrent processes


WRITER = textwrap.dedent("""
    import os, sys, time
    from convlstm_triton import tuning

    # Tuning on, with timings that make BLOCK_M=32 the fastest.
    tuning._tuning_enabled = lambda device: True
    tuning._benchmark = lambda run, cfg: float(cfg["BLOCK_M"])
    who, n, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    open(os.path.join(sync, "ready-" + who), "w").close()
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(sync, "go")) and time.time() < deadline:
        time.sleep(0.005)
    configs = [{"BLOCK_M": 64}, {"BLOCK_M": 32}]
    for i in range(n):
        assert tuning.pick_config("k", (who, i), configs, lambda cfg: None, "cpu") == configs[1]
""")


def test_two_processes_writing_at_once_keep_all_entries(cache_dir, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = dict(os.environ, CONVLSTM_TRITON_CACHE_DIR=str(cache_dir), TRITON_INTERPRET="1")
    n = 25
    procs = [subprocess.Popen([sys.executable, str(script), who, str(n), str(sync)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for who in ("a", "b")]
    deadline = time.time() + 120
    while len(list(sync.glob("ready-*"))) < 2 and time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    (sync / "go").touch()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    entries = tuning.cached_entries(DEVICE)
    assert set(entries) == {f"k|{(who, i)!r}" for who in "ab" for i in range(n)}
    assert all(e["config"] == {"BLOCK_M": 32} for e in entries.values())
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# when tuning is off


def test_interpreter_returns_first_config_and_writes_nothing(cache_dir, monkeypatch):
    monkeypatch.setattr(tuning, "_device_can_benchmark", lambda device: True)
    monkeypatch.setattr(tuning, "_benchmark", no_benchmark)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pick() is CONFIGS[0]
    assert pick() is CONFIGS[0]
    assert not cache_dir.exists()
    (event,) = tuning.tuning_log()  # logged once per (kernel, key)
    assert event["source"] == "default" and event["trials"] == []
    assert event["chosen"] == CONFIGS[0]


def test_env_var_turns_tuning_off(cache_dir, monkeypatch):
    monkeypatch.setattr(tuning, "_device_can_benchmark", lambda device: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("CONVLSTM_TRITON_AUTOTUNE", "0")
    monkeypatch.setattr(tuning, "_benchmark", no_benchmark)
    assert pick() is CONFIGS[0]
    assert not cache_dir.exists()
    # The same setup with the variable unset does tune: the variable was what stopped it.
    monkeypatch.delenv("CONVLSTM_TRITON_AUTOTUNE")
    bench = FakeBench({64: 2.0, 128: 1.0, 32: 3.0})
    monkeypatch.setattr(tuning, "_benchmark", bench)
    assert pick() is CONFIGS[1]
    assert bench.calls == [64, 128, 32]


def test_non_cuda_device_returns_first_config(cache_dir, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(tuning, "_benchmark", no_benchmark)
    assert not tuning._tuning_enabled(torch.device("cpu"))
    assert pick() is CONFIGS[0]
    assert tuning._device_can_benchmark("cuda:0") and tuning._device_can_benchmark(0)


def test_pick_config_needs_candidates(cache_dir):
    with pytest.raises(ValueError, match="no candidate configs"):
        tuning.pick_config("k", KEY, [], lambda cfg: None, DEVICE)


# ---------------------------------------------------------------------------------------------
# tune()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_tune_without_gpu_raises(cache_dir, monkeypatch):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        tune_ahead.tune([(1, 2, 5, 4, 2, 4, 3)])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        tune_ahead.tune([(1, 2, 5, 4, 2, 4, 3)], device="cpu")


def test_tune_dry_run_on_interpreter(cache_dir):
    """device="cpu" under TRITON_INTERPRET=1 (conftest) runs the functional path, tuning off."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, set on CPU machines)")
    seen = []
    events = tune_ahead.tune([(1, 2, 5, 2, 3, 3)], ["fp32"], ["fwd", "train"], device="cpu",
                             progress=lambda done, total, label: seen.append((done, total, label)))
    assert seen[0] == (0, 2, "1x2x5x2x3x3 fp32 fwd") and seen[-1] == (2, 2, "done")
    assert all(e["source"] == "default" for e in events)
    assert not cache_dir.exists()


def test_tune_shape_forms():
    want = dict(name="n", batch=2, steps=3, spatial=(5, 4), in_channels=2, filters=7,
                kernel_size=(3, 3))
    assert tune_ahead._normalize_shape((2, 3, 5, 4, 2, 7, 3)) == dict(want, name="2x3x5x4x2x7x3x3")
    assert tune_ahead._normalize_shape(dict(B=2, T=3, spatial=(5, 4), C_in=2, F=7, k=3,
                                        name="n")) == want
    assert tune_ahead._normalize_shape(dict(batch=2, steps=3, spatial=[5, 4], in_channels=2,
                                        filters=7, kernel=(3, 3), name="n")) == want
    shape3d = tune_ahead._normalize_shape((1, 2, 3, 4, 5, 6, 7, 3))
    assert shape3d["spatial"] == (3, 4, 5) and shape3d["kernel_size"] == (3, 3, 3)
    with pytest.raises(ValueError, match="1 to 3 spatial"):
        tune_ahead._normalize_shape((1, 2, 3, 4))
    with pytest.raises(ValueError, match="missing 'filters'"):
        tune_ahead._normalize_shape(dict(B=1, T=1, spatial=(3,), C_in=1, k=3))


# ---------------------------------------------------------------------------------------------
# timing modes: cold L2 (do_bench) and warm L2 (CUDA events, no flush)


def test_timing_mode_reaches_the_timer_and_is_recorded(fake_bench):
    assert pick(warm_l2=True) is CONFIGS[1]
    assert fake_bench.modes == ["warm_l2"] * 3
    assert tuning._current_timing() == "cold_l2"  # restored after tuning
    assert pick(key=KEY[:-1] + (False,)) is CONFIGS[1]
    assert fake_bench.modes == ["warm_l2"] * 3 + ["cold_l2"] * 3
    entries = read_cache()["entries"]
    assert entries[f"step_forward|{KEY!r}"]["timing"] == "warm_l2"
    assert entries[f"step_forward|{KEY[:-1] + (False,)!r}"]["timing"] == "cold_l2"
    assert [e["timing"] for e in tuning.tuning_log()] == ["warm_l2", "cold_l2"]


def test_disk_hit_needs_the_same_timing(fake_bench, monkeypatch):
    assert pick(warm_l2=True) is CONFIGS[1]
    new_process(monkeypatch)
    assert pick(warm_l2=True) is CONFIGS[1]  # from disk
    (event,) = tuning.tuning_log()
    assert event["source"] == "disk" and event["timing"] == "warm_l2"
    # Timed the other way: tuned again, and the entry overwritten.
    bench = FakeBench({64: 1.0, 128: 2.0, 32: 3.0})
    new_process(monkeypatch, bench)
    assert pick() is CONFIGS[0]
    assert bench.modes == ["cold_l2"] * 3
    entry = read_cache()["entries"][f"step_forward|{KEY!r}"]
    assert entry["timing"] == "cold_l2" and entry["config"] == CONFIGS[0]


def test_old_entry_without_timing_reads_as_cold(fake_bench, monkeypatch):
    """Files written before the "timing" field: readable, no warning; their entries were timed
    with do_bench (cold), so a warm request tunes again."""
    assert pick() is CONFIGS[1]
    data = read_cache()
    for entry in data["entries"].values():
        del entry["timing"]
    with open(tuning.cache_path(DEVICE), "w") as f:
        json.dump(data, f)
    new_process(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick() is CONFIGS[1]
    assert tuning.tuning_log()[0]["source"] == "disk"
    bench = FakeBench({64: 2.0, 128: 3.0, 32: 1.0})
    new_process(monkeypatch, bench)
    assert pick(warm_l2=True) is CONFIGS[2]
    assert bench.modes == ["warm_l2"] * 3
    assert read_cache()["entries"][f"step_forward|{KEY!r}"]["timing"] == "warm_l2"


def test_nested_tuning_restores_the_outer_mode(fake_bench):
    """forward_variant (cold) times whole forwards whose step launches tune warm inside."""
    def outer_run(cfg):
        tuning.pick_config("step_forward", ("inner", cfg["BLOCK_M"]), CONFIGS,
                           lambda c: None, DEVICE, warm_l2=True)

    assert tuning.pick_config("forward_variant", KEY, CONFIGS, outer_run, DEVICE) is CONFIGS[1]
    # outer 64 (cold), its inner tuning (3 warm), outer 128, inner, outer 32, inner
    assert fake_bench.modes == (["cold_l2"] + ["warm_l2"] * 3) * 3
    assert tuning._current_timing() == "cold_l2"


class FakeGPU:
    """A fake CUDA clock: run(cfg) adds that config's ms, _gpu_sleep(cycles) adds cycles/RATE;
    events read the clock when recorded. ``ops`` logs what the timer did, in order."""

    RATE = 1.5e6  # sleep cycles per ms

    def __init__(self, ms_per_call, sleep=True):
        self.ms_per_call = ms_per_call  # BLOCK_M -> ms, or a callable (BLOCK_M, call index)
        self.clock = 0.0
        self.ops = []
        self.sleep = sleep
        self.runs = {}

    def install(self, monkeypatch):
        gpu = self

        class Event:
            def __init__(self):
                self.t = None

            def record(self):
                gpu.ops.append("record")
                self.t = gpu.clock

            def elapsed_time(self, end):
                assert self.t is not None and end.t is not None, "event not recorded"
                return end.t - self.t

        def gpu_sleep(cycles):
            if not gpu.sleep:
                raise AttributeError("module 'torch.cuda' has no attribute '_sleep'")
            assert cycles >= 1 and isinstance(cycles, int)
            gpu.ops.append(("sleep", cycles))
            gpu.clock += cycles / gpu.RATE

        def forbidden(*args, **kwargs):
            raise AssertionError("the warm-L2 timer must not call do_bench (it flushes L2)")

        monkeypatch.setattr(tuning, "_timing_event", Event)
        monkeypatch.setattr(tuning, "_synchronize", lambda: gpu.ops.append("sync"))
        monkeypatch.setattr(tuning, "_gpu_sleep", gpu_sleep)
        monkeypatch.setattr(triton.testing, "do_bench", forbidden)
        monkeypatch.setattr(tuning, "_tuning_enabled", lambda device: True)
        return self

    def run(self, cfg):
        m = cfg["BLOCK_M"]
        i = self.runs[m] = self.runs.get(m, 0) + 1
        t = self.ms_per_call(m, i) if callable(self.ms_per_call) else self.ms_per_call[m]
        self.ops.append(("run", m))
        self.clock += t


def calls_per_config(ms):
    """What the warm timer should do for a kernel of ``ms`` per call."""
    warmup = max(1, min(tuning.WARM_MAX_WARMUP, int(tuning.WARMUP_MS / ms)))
    reps = max(tuning.WARM_MIN_REPS, min(tuning.WARM_MAX_REPS, int(tuning.REP_MS / ms)))
    return warmup, reps


def test_warm_timer_times_back_to_back_calls_without_do_bench(cache_dir, monkeypatch):
    times = {64: 0.25, 128: 0.125, 32: 0.5}  # exact in binary: the estimates are exact too
    gpu = FakeGPU(times).install(monkeypatch)
    chosen = tuning.pick_config("step_forward", KEY, CONFIGS, gpu.run, DEVICE, warm_l2=True)
    assert chosen is CONFIGS[1]
    entry = read_cache()["entries"][f"step_forward|{KEY!r}"]
    assert entry["timing"] == "warm_l2"
    assert [t["ms"] for t in entry["trials"]] == pytest.approx([0.25, 0.125, 0.5])
    for m, ms in times.items():
        warmup, reps = calls_per_config(ms)
        assert gpu.runs[m] == 1 + 5 + warmup + reps
    # The sleep calibration ran once (first config), the head start once per config.
    sleeps = [op for op in gpu.ops if op[0] == "sleep"]
    assert len(sleeps) == 2 + 3 and sleeps[0] == sleeps[1] == ("sleep", 1_000_000)
    assert all(c <= tuning.WARM_HEAD_START_MAX_MS * FakeGPU.RATE + 1 for _, c in sleeps[2:])
    # Per config: 1 call, sync, 5 calls between two events, sync; then warm-up calls, the head
    # start, and each timed call between its own pair of events; sync. Nothing else.
    ops = gpu.ops
    first_sleep = ops.index(("sleep", 1_000_000))
    calibration = ops[first_sleep:first_sleep + 5]
    assert calibration == [("sleep", 1_000_000), "record", ("sleep", 1_000_000), "record",
                           "sync"]
    del ops[first_sleep:first_sleep + 5]
    i = 0
    for m, ms in times.items():
        warmup, reps = calls_per_config(ms)
        want = ([("run", m), "sync", "record"] + [("run", m)] * 5 + ["record", "sync"]
                + [("run", m)] * warmup)
        assert ops[i:i + len(want)] == want
        i += len(want)
        assert ops[i][0] == "sleep"
        i += 1
        want = ["record", ("run", m), "record"] * reps + ["sync"]
        assert ops[i:i + len(want)] == want
        i += len(want)
    assert i == len(ops)


def test_warm_timer_caps_and_median(cache_dir, monkeypatch):
    # A tiny kernel: capped warm-up and repetitions; an outlier on every 4th timed call does not
    # move the median.
    gpu = FakeGPU(lambda m, i: 5.0 if i > 100 and i % 4 == 0 else 1e-4).install(monkeypatch)
    ms = tuning._benchmark_warm(gpu.run, CONFIGS[0])
    assert ms == pytest.approx(1e-4)
    assert gpu.runs[64] == 1 + 5 + tuning.WARM_MAX_WARMUP + tuning.WARM_MAX_REPS
    # A slow kernel: at least one warm-up call and WARM_MIN_REPS timed calls.
    gpu = FakeGPU({64: 100.0}).install(monkeypatch)
    assert tuning._benchmark_warm(gpu.run, CONFIGS[0]) == pytest.approx(100.0)
    assert gpu.runs[64] == 1 + 5 + 1 + tuning.WARM_MIN_REPS


def test_warm_timer_without_cuda_sleep(cache_dir, monkeypatch):
    """A torch without torch.cuda._sleep: timed without a head start, still per call."""
    gpu = FakeGPU({64: 0.5}, sleep=False).install(monkeypatch)
    assert tuning._benchmark_warm(gpu.run, CONFIGS[0]) == pytest.approx(0.5)
    assert not [op for op in gpu.ops if op[0] == "sleep"]
    assert list(tuning._sleep_cycles_per_ms.values()) == [None]  # calibration tried once


def test_warm_timer_errors_fail_the_config(cache_dir, monkeypatch):
    gpu = FakeGPU({64: 0.2, 128: 0.1, 32: 0.3}).install(monkeypatch)

    def run(cfg):
        if cfg["BLOCK_M"] == 128:
            raise RuntimeError("OutOfResources: shared memory")
        gpu.run(cfg)

    assert tuning.pick_config("step_forward", KEY, CONFIGS, run, DEVICE,
                              warm_l2=True) is CONFIGS[0]
    trials = read_cache()["entries"][f"step_forward|{KEY!r}"]["trials"]
    assert trials[1]["ms"] is None and trials[1]["error"].startswith("RuntimeError")
