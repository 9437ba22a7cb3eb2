"""Per-shape launch-config selection with a persistent on-disk cache.

A launcher asks ``pick_config(kernel_name, key, configs, run, device)`` for the config of one
launch. On a CUDA device the first call for a ``(kernel_name, key)`` benchmarks every candidate
config and keeps the fastest, in memory and in a JSON file, so a later process (a second training
run, the next benchmark) finds it without benchmarking again. Under Triton's interpreter, on a
non-CUDA device, or with ``CONVLSTM_TRITON_AUTOTUNE=0`` it returns ``configs[0]`` (the default
config) and benchmarks nothing.

Two ways of timing a config, chosen per launch by ``pick_config(..., warm_l2=...)``:

* cold L2 (``warm_l2=False``, the default; ``"timing": "cold_l2"`` in the cache):
  ``triton.testing.do_bench``, which zeroes a 256 MB buffer before every repetition, so each
  call starts with an empty L2. Right for the whole-sequence kernels (input projection, weight
  and input gradients, the forward-variant choice): they run once per sequence, on operands
  that other kernels have long evicted from L2 (or that do not fit in it).
* warm L2 (``warm_l2=True``; ``"timing": "warm_l2"``): CUDA events around back-to-back calls,
  no flush and no flush buffer (so tuning near out-of-memory does not fail for it): a few
  warm-up calls, then up to ``WARM_MAX_REPS`` timed calls (about ``REP_MS`` in all), median
  per call, with the GPU held busy by ``torch.cuda._sleep`` while the host queues the timed
  calls so that host launch overhead is not timed. This is how the per-time-step kernels run:
  in a ConvLSTM's time loop the previous step's ``h`` (and ``c``) is still in L2 when the next
  step starts. The launchers tune the step kernels (``step_forward``, ``step_backward``) warm
  and the whole-sequence kernels cold.

A cache entry records its timing mode; an entry without one (written before the field existed)
was timed cold. An entry whose mode differs from the one asked for is tuned again and
overwritten; in one process the first choice for a ``(kernel_name, key)`` stands (a kernel is
tuned in one mode).

Cache file: one per (GPU name, Triton version, torch version), because a config's speed (and
whether it compiles at all) depends on all three::

    $CONVLSTM_TRITON_CACHE_DIR/tuning-<gpu>-triton<ver>-torch<ver>.json
    (default dir: $XDG_CACHE_HOME/convlstm_triton, else ~/.cache/convlstm_triton)

    {"schema": 1, "device": "NVIDIA H100 80GB HBM3", "triton": "3.6.0", "torch": "2.11.0",
     "entries": {
        "step_forward|(65536, 64, 3, 3, 1, 'bfloat16', True)": {
            "kernel": "step_forward", "key": "(65536, 64, 3, 3, 1, 'bfloat16', True)",
            "config": {"BLOCK_M": 64, "BLOCK_F": 32, "BLOCK_K": 32, "num_warps": 4, ...},
            "timing": "warm_l2",
            "trials": [{"config": {...}, "ms": 0.0123, "error": null},
                       {"config": {...}, "ms": null, "error": "OutOfResources: ..."}],
            "flop": 1.2e9, "time": "2026-11-27T10:00:00Z"}}}

Writes are atomic (a temp file in the same directory, then ``os.replace``) and merge with what is
on disk at write time under an ``fcntl`` lock where available, so processes tuning at once keep
each other's entries. A corrupt, unreadable or stale file (bad JSON, another schema version, wrong
types) is ignored with one warning and rewritten on the next write; a cache directory that cannot
be written leaves the tuned configs in memory only, with one warning. Nothing here raises on a bad
cache.
"""

import contextlib
import datetime
import json
import math
import os
import re
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable

import torch
import triton

from .platform import is_hip, platform

__all__ = ["pick_config", "clear_cache", "cache_path", "cached_entries", "bucket",
           "tuning_log", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
# Timing budget per config, ms (do_bench's warmup/rep; the warm timer's too). Short: a launch is
# tuned on its first call inside a user's program, and kernels of one ConvLSTM step run for
# microseconds to a few ms.
WARMUP_MS = 5
REP_MS = 25
# Warm-L2 timer: calls per config (warm-up at least 1 up to WARM_MAX_WARMUP; timed between
# WARM_MIN_REPS and WARM_MAX_REPS), and at most this much GPU sleep ahead of the timed calls.
WARM_MAX_WARMUP = 50
WARM_MIN_REPS = 10
WARM_MAX_REPS = 500
WARM_HEAD_START_MAX_MS = 100.0
COLD_L2 = "cold_l2"
WARM_L2 = "warm_l2"

_memory: dict = {}  # (kernel_name, device slot, key) -> chosen config (an element of configs)
_defaults_logged: set = set()  # (kernel_name, key) already logged as "default"
_log: list = []  # tuning events, see tuning_log()
_warned: set = set()
_device_names: dict = {}
_sleep_cycles_per_ms: dict = {}  # CUDA device index -> torch.cuda._sleep cycles per ms (or None)
_tune_lock = threading.RLock()
_timing_state = threading.local()  # .mode: the timing mode of the tuning in progress


# ---------------------------------------------------------------------------------------------
# when to tune (module-level functions so that tests can monkeypatch them)


def _autotune_env_enabled():
    return os.environ.get("CONVLSTM_TRITON_AUTOTUNE", "1").strip().lower() not in (
        "0", "false", "off", "no")


def _interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _device_can_benchmark(device):
    return _as_device(device).type == "cuda"


def _tuning_enabled(device):
    """Benchmark configs only on a real GPU launch that the user has not opted out of."""
    return (_autotune_env_enabled() and not _interpreter_enabled()
            and _device_can_benchmark(device))


def _current_timing():
    """The timing mode (``COLD_L2`` or ``WARM_L2``) of the tuning in progress on this thread."""
    return getattr(_timing_state, "mode", COLD_L2)


@contextlib.contextmanager
def _timing_mode(mode):
    previous = _current_timing()
    _timing_state.mode = mode
    try:
        yield
    finally:
        _timing_state.mode = previous


def _benchmark(run, cfg):
    """Median ms of ``run(cfg)``, timed the way the tuning in progress asks
    (``_current_timing()``): cold L2 with ``do_bench``, warm L2 with ``_benchmark_warm``. Raises
    whatever ``run`` raises (compile error, out of shared memory, ...). The one place that
    times: tests replace it with fake timings for both modes."""
    if _current_timing() == WARM_L2:
        return _benchmark_warm(run, cfg)
    import triton.testing

    return triton.testing.do_bench(lambda: run(cfg), warmup=WARMUP_MS, rep=REP_MS,
                                   return_mode="median")


# The CUDA primitives of the warm timer (module-level so that tests can fake them on a CPU).


def _timing_event():
    return torch.cuda.Event(enable_timing=True)


def _synchronize():
    torch.cuda.synchronize()


def _gpu_sleep(cycles):
    """Keep the current stream busy for about ``cycles`` GPU clock cycles."""
    torch.cuda._sleep(int(cycles))


def _cycles_per_ms():
    """``torch.cuda._sleep`` cycles per ms on the current device, measured once per device;
    None where ``_sleep`` is missing or fails (the warm timer then runs without a head start)."""
    index = torch.cuda.current_device() if torch.cuda.is_available() else -1
    if index in _sleep_cycles_per_ms:
        return _sleep_cycles_per_ms[index]
    rate = None
    try:
        cycles = 1_000_000
        _gpu_sleep(cycles)  # first call: load the kernel
        start, end = _timing_event(), _timing_event()
        start.record()
        _gpu_sleep(cycles)
        end.record()
        _synchronize()
        ms = start.elapsed_time(end)
        if ms > 0 and math.isfinite(ms):
            rate = cycles / ms
    except Exception:  # no torch.cuda._sleep in this torch: time without a head start
        rate = None
    _sleep_cycles_per_ms[index] = rate
    return rate


def _benchmark_warm(run, cfg):
    """Median ms per call of ``run(cfg)`` called back to back with a warm L2: nothing flushed,
    no flush buffer allocated. Works with any Triton (only torch.cuda events are used).

    One call (compiles), 5 calls to estimate the time per call, warm-up calls for about
    ``WARMUP_MS``, then ``WARM_MIN_REPS`` to ``WARM_MAX_REPS`` calls for about ``REP_MS``, each
    between its own pair of events. Before the timed calls a ``torch.cuda._sleep`` keeps the GPU
    busy for about as long as the host takes to queue them, so the calls run back to back on the
    GPU as in a time loop and the host's launch overhead is not in the times."""
    def call():
        run(cfg)

    call()
    _synchronize()
    start, end = _timing_event(), _timing_event()
    host0 = time.perf_counter()
    start.record()
    for _ in range(5):
        call()
    end.record()
    host_ms = (time.perf_counter() - host0) * 1e3 / 5
    _synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-4)
    n_warmup = max(1, min(WARM_MAX_WARMUP, int(WARMUP_MS / estimate_ms)))
    n_reps = max(WARM_MIN_REPS, min(WARM_MAX_REPS, int(REP_MS / estimate_ms)))
    starts = [_timing_event() for _ in range(n_reps)]
    ends = [_timing_event() for _ in range(n_reps)]
    rate = _cycles_per_ms()  # before the warm-up: its first call synchronizes
    for _ in range(n_warmup):
        call()
    if rate:
        # host time to queue the timed calls (their events too), with a margin
        head_start_ms = min(WARM_HEAD_START_MAX_MS, 1.25 * (host_ms + 0.01) * n_reps)
        _gpu_sleep(max(1, int(head_start_ms * rate)))
    for i in range(n_reps):
        starts[i].record()
        call()
        ends[i].record()
    _synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


_generation = 0  # changes whenever a config once chosen may be chosen otherwise


def generation():
    """The tuning state, as part of a launch plan's problem key (``autograd.problem_plans``):
    plans replay the configs chosen when they were recorded, so they are recorded again after
    the cache is cleared, or when tuning is switched on or off."""
    return _generation, _autotune_env_enabled()


def _new_generation():
    global _generation
    _generation += 1


def _capturing(device):
    """Benchmarking synchronizes, which a CUDA-graph capture forbids."""
    return (_as_device(device).type == "cuda" and torch.cuda.is_available()
            and torch.cuda.is_current_stream_capturing())


# ---------------------------------------------------------------------------------------------
# the public API


def bucket(n: int) -> int:
    """The next power of two >= n (1 for n <= 1): how launchers bucket M in a key, so that
    batch and sequence sizes near each other share one tuning."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pick_config(kernel_name: str, key: tuple, configs: list, run: Callable[[dict], None],
                device, *, flop: float | None = None, warm_l2: bool = False,
                measure: bool = True) -> dict:
    """The launch config for one problem: cached, or the fastest of ``configs`` once measured.

    Args:
        kernel_name: the kernel's name, e.g. ``"step_forward"`` (a namespace in the cache).
        key: a tuple of plain ints/strs/bools/floats (``repr`` round-trips them) that fixes which
            config is best: bucketed M (``bucket(M)``), exact channel counts, kernel size, dtype
            name, constexpr flags. Never a tuned parameter.
        configs: candidate configs, dicts of plain values such as ``{"BLOCK_M": 64,
            "BLOCK_F": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}``. ``configs[0]`` is
            the default, used wherever nothing is measured.
        run: ``run(cfg)`` launches the kernel once with ``cfg`` on this call's problem. It is
            called many times per config while tuning (warm-up and repetitions), so it
            must be safe to repeat: it writes scratch outputs (not the caller's real outputs)
            or outputs that each launch fully overwrites, and a kernel that accumulates
            (``+=``, atomics) must reset its buffer inside ``run`` or write into a scratch one,
            or trials would leak into the result. It may raise (compile error, out of shared
            memory): that config is skipped and recorded as failed.
        device: the device the kernel runs on (``torch.device``, str or index).
        flop: optional FLOP count of the launch that is timed (reported as TFLOP/s by
            ``bench/autotune.py``; stored with the entry).
        warm_l2: time the configs with a warm L2 (back-to-back calls, no flush: how the
            per-time-step kernels run) instead of ``do_bench``'s flushed, cold L2 (how the
            whole-sequence kernels run). Recorded in the entry as ``"timing"``; an entry on disk
            timed the other way is tuned again.
        measure: False where nothing may be timed (a launch being traced for export: its
            tensors are fake): the cached config, else ``configs[0]`` with one warning.

    Returns:
        An element of ``configs``. If every config fails, ``configs[0]`` (remembered in this
        process only, not written to disk), so the real launch raises the real error.
    """
    if not configs:
        raise ValueError(f"pick_config({kernel_name!r}): no candidate configs")
    if not _tuning_enabled(device):
        if (kernel_name, key) not in _defaults_logged:
            _defaults_logged.add((kernel_name, key))
            _log.append(_event(kernel_name, key, "default", configs[0], [], flop, device))
        return configs[0]
    slot = _device_slot(device)
    hit = _memory.get((kernel_name, slot, key))
    if hit is not None:
        return hit
    with _tune_lock:
        hit = _memory.get((kernel_name, slot, key))
        if hit is not None:
            return hit
        return _pick_slow(kernel_name, key, configs, run, device, slot, flop,
                          WARM_L2 if warm_l2 else COLD_L2, measure)


def cache_path(device=None) -> str:
    """The cache file of ``device`` (default: the current CUDA device, else "cpu")."""
    name = _device_name(_default_device(device))
    fname = (f"tuning-{_sanitize(name)}-triton{_sanitize(triton.__version__)}"
             f"-torch{_sanitize(torch.__version__)}.json")
    return os.path.join(_cache_dir(), fname)


def cached_entries(device=None) -> dict:
    """The valid entries of ``device``'s cache file: ``"kernel|repr(key)"`` -> entry dict."""
    return _read_entries(cache_path(device), _device_name(_default_device(device)))


def clear_cache(device=None) -> None:
    """Delete ``device``'s cache file and forget every config tuned in this process."""
    _new_generation()
    _memory.clear()
    _defaults_logged.clear()
    path = cache_path(device)
    with contextlib.suppress(OSError):
        os.remove(path)


def tuning_log(clear: bool = False) -> list:
    """Tuning events of this process, oldest first (copies; ``clear=True`` empties the log).

    Each: ``{"kernel", "key" (repr), "source": "tuned" | "disk" | "default" | "failed" (every
    config raised; the default is used), "chosen": config,
    "trials": [{"config", "ms" (None if it failed), "error" (None if it ran)}], "flop",
    "timing": "cold_l2" | "warm_l2" (None for "default"), "device", "time"}``. "default"
    (tuning off: interpreter, non-CUDA device or ``CONVLSTM_TRITON_AUTOTUNE=0``) is logged once
    per (kernel, key); memory hits are not logged.
    """
    events = [dict(e) for e in _log]
    if clear:
        _log.clear()
    return events


# ---------------------------------------------------------------------------------------------
# tuning


def _entry_timing(entry):
    """An entry's timing mode; one without the field was written when every tuning ran cold."""
    return entry.get("timing") or COLD_L2


def _pick_slow(kernel_name, key, configs, run, device, slot, flop, timing, measure=True):
    name = _device_name(device)
    path = cache_path(device)
    entry_id = _entry_id(kernel_name, key)
    entry = _read_entries(path, name).get(entry_id)
    if entry is not None and _entry_timing(entry) == timing:
        chosen = _find_config(entry["config"], configs)
        if chosen is not None:
            _memory[(kernel_name, slot, key)] = chosen
            _log.append(_event(kernel_name, key, "disk", chosen, entry["trials"],
                               entry.get("flop"), device, timing))
            return chosen
    if _capturing(device):
        _warn_once("capture", "convlstm_triton: a kernel launch met during CUDA-graph capture "
                   "has no tuned config; using the default (tune before capturing, e.g. with "
                   "convlstm_triton.tune or one eager call)")
        return configs[0]
    if not measure:
        _warn_once("traced", "convlstm_triton: a kernel launch being traced (torch.export for "
                   "AOTInductor) has no tuned config; using the default (tune before exporting, "
                   "e.g. with convlstm_triton.tune or one eager call on the GPU)")
        return configs[0]

    trials = []
    dev = _as_device(device)
    ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx, _timing_mode(timing):
        for cfg in configs:
            try:
                ms = float(_benchmark(run, cfg))
                if not math.isfinite(ms):
                    raise RuntimeError(f"non-finite time {ms}")
                trials.append({"config": dict(cfg), "ms": ms, "error": None})
            except Exception as exc:  # a config that cannot compile or launch is skipped
                first = (str(exc).strip().splitlines() or [""])[0]
                trials.append({"config": dict(cfg), "ms": None,
                               "error": f"{type(exc).__name__}: {first}"[:300]})
    ok = [(t["ms"], i) for i, t in enumerate(trials) if t["ms"] is not None]
    if not ok:
        # Kept in memory (not on disk) so that later launches do not re-run a failing tuning
        # (e.g. out of memory for do_bench's L2-flush buffer while the real launch fits).
        _memory[(kernel_name, slot, key)] = configs[0]
        _log.append(_event(kernel_name, key, "failed", configs[0], trials, flop, device, timing))
        _warn_once(("all-failed", kernel_name), f"convlstm_triton: every config of "
                   f"{kernel_name} failed for key {key!r}; first error: {trials[0]['error']}")
        return configs[0]
    chosen = configs[min(ok)[1]]
    _memory[(kernel_name, slot, key)] = chosen
    event = _event(kernel_name, key, "tuned", chosen, trials, flop, device, timing)
    _log.append(event)
    _write_entry(path, name, entry_id, {
        "kernel": kernel_name, "key": repr(key), "config": dict(chosen), "timing": timing,
        "trials": trials, "flop": flop, "time": event["time"],
    })
    return chosen


def _event(kernel_name, key, source, chosen, trials, flop, device, timing=None):
    return {"kernel": kernel_name, "key": repr(key), "source": source, "chosen": dict(chosen),
            "trials": [dict(t) for t in trials], "flop": flop, "timing": timing,
            "device": _device_name(device), "time": _now()}


def _find_config(cfg, configs):
    for c in configs:
        if c == cfg:
            return c
    return None


def _entry_id(kernel_name, key):
    return f"{kernel_name}|{key!r}"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# devices and paths


def _as_device(device):
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def _default_device(device):
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_slot(device):
    dev = _as_device(device)
    if dev.type == "cuda" and dev.index is None:
        return ("cuda", torch.cuda.current_device())
    return (dev.type, dev.index)


def _device_name(device):
    slot = _device_slot(device)
    name = _device_names.get(slot)
    if name is None:
        name = torch.cuda.get_device_name(slot[1]) if slot[0] == "cuda" else slot[0]
        if slot[0] == "cuda" and is_hip():
            # AMD boards share marketing names across archs: the arch keys the entries
            name = f"{name} ({platform(torch.device('cuda', slot[1])).arch})"
        _device_names[slot] = name
    return name


def _sanitize(text):
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "unknown"


def _cache_dir():
    explicit = os.environ.get("CONVLSTM_TRITON_CACHE_DIR")
    if explicit:
        return os.path.expanduser(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "convlstm_triton")


def _warn_once(tag, message):
    if tag in _warned:
        return
    _warned.add(tag)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _reset_state():
    """Forget everything this process holds (memory cache, log, warnings): a fresh process,
    for tests."""
    _new_generation()
    _memory.clear()
    _defaults_logged.clear()
    _log.clear()
    _warned.clear()
    _device_names.clear()
    _sleep_cycles_per_ms.clear()
    _timing_state.mode = COLD_L2


# ---------------------------------------------------------------------------------------------
# the JSON file


def _is_scalar(v):
    return isinstance(v, (int, float, str, bool))


def _valid_config(cfg):
    return (isinstance(cfg, dict) and bool(cfg)
            and all(isinstance(k, str) and _is_scalar(v) for k, v in cfg.items()))


def _valid_entry(entry):
    if not isinstance(entry, dict) or not _valid_config(entry.get("config")):
        return False
    trials = entry.get("trials")
    if not isinstance(trials, list):
        return False
    for t in trials:
        if not (isinstance(t, dict) and _valid_config(t.get("config"))):
            return False
        ms, err = t.get("ms"), t.get("error")
        if not (ms is None or (isinstance(ms, (int, float)) and not isinstance(ms, bool))):
            return False
        if not (err is None or isinstance(err, str)):
            return False
    timing = entry.get("timing")  # absent in files written before it existed: fine
    if not (timing is None or isinstance(timing, str)):
        return False
    flop = entry.get("flop")
    return flop is None or (isinstance(flop, (int, float)) and not isinstance(flop, bool))


def _load(path, device_name):
    """(entries, problem): the file's valid entries, and why it was rejected (None if fine or
    missing). Invalid single entries are dropped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"unreadable ({type(exc).__name__}: {exc})"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        return {}, f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return {}, "not a tuning cache (no 'entries' object)"
    if data.get("schema") != SCHEMA_VERSION:
        return {}, f"schema {data.get('schema')!r}, expected {SCHEMA_VERSION} (stale)"
    for field, want in (("device", device_name), ("triton", triton.__version__),
                        ("torch", torch.__version__)):
        if data.get(field) != want:
            return {}, f"{field} {data.get(field)!r}, expected {want!r} (stale)"
    entries = {k: v for k, v in data["entries"].items() if isinstance(k, str) and _valid_entry(v)}
    dropped = len(data["entries"]) - len(entries)
    return entries, (f"{dropped} invalid entries dropped" if dropped else None)


def _read_entries(path, device_name):
    entries, problem = _load(path, device_name)
    if problem is not None:
        _warn_once(("bad-file", path), f"convlstm_triton: ignoring tuning cache {path}: "
                   f"{problem}; it will be rewritten")
    return entries


# How long a writer waits for the cache lock before it gives up (a writer frozen while holding
# it, e.g. stopped by SIGSTOP, must not block every other tuning process): then the entry stays
# in memory, with one warning.
LOCK_TIMEOUT_S = 10.0
# Temp files of interrupted writes (a writer killed between mkstemp and os.replace) older than
# this are removed by the next writer.
STALE_TEMP_S = 600.0


class _LockTimeout(OSError):
    pass


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive fcntl lock on ``path + ".lock"`` where fcntl exists, waited for at most
    ``LOCK_TIMEOUT_S`` (then ``_LockTimeout``); else no lock (the write is still atomic, and
    _write_entry re-checks that its entry landed)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path + ".lock", "a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        delay = 0.001
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _LockTimeout(f"the lock {path}.lock was held for more than "
                                       f"{LOCK_TIMEOUT_S:g} s") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.05)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_stale_temps(directory):
    """Remove ``.tuning-*.tmp`` files older than ``STALE_TEMP_S`` (left by killed writers)."""
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(".tuning-") and name.endswith(".tmp"):
                full = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    if now - os.stat(full).st_mtime > STALE_TEMP_S:
                        os.remove(full)


def _write_entry(path, device_name, entry_id, entry):
    """Merge one entry into the file: re-read under the lock, update, write a temp file, replace.
    On any OSError the entry stays in memory only (one warning)."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        _remove_stale_temps(directory)
        for _ in range(3):  # without a lock a concurrent writer may replace our write: retry
            with _file_lock(path):
                entries, _ = _load(path, device_name)
                entries[entry_id] = entry
                _atomic_write(path, {
                    "schema": SCHEMA_VERSION, "device": device_name,
                    "triton": triton.__version__, "torch": torch.__version__,
                    "entries": dict(sorted(entries.items())),
                })
            if entry_id in _load(path, device_name)[0]:
                return
    except _LockTimeout as exc:
        _warn_once(("locked", path), f"convlstm_triton: tuning cache {path} not written ({exc}: "
                   "another process holds it); tuned configs are kept in memory only")
    except OSError as exc:
        _warn_once(("unwritable", directory), f"convlstm_triton: cannot write the tuning cache "
                   f"{path} ({type(exc).__name__}: {exc}); tuned configs are kept in memory "
                   f"only (set CONVLSTM_TRITON_CACHE_DIR to a writable directory)")


def _umask():
    """The process umask, read without changing it where Linux tells it (setting it to read it
    would race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tuning-", suffix=".tmp")
    try:
        # mkstemp makes 0600; a cache file gets the mode the umask gives new files, so that a
        # shared cache directory works for every user it is shared with
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
