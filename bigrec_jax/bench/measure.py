"""Timing and memory measurement shared by both workers (no jax/torch imports here).

`timed(fn, sync)` runs one warm-up call (compilation, caches, allocator growth), then repeats
until `repeats` timed calls or `budget_s` seconds have been spent (at least one), and reports the
median. `sync` forces completion (block_until_ready / cuda.synchronize) inside the timed region.
`cpu_s` is the median process CPU time (all threads) of the timed runs: on a CPU shared with other
work it is steadier than wall time, and cpu_s ratios show the work each side really does.
Peak host memory is the process's VmHWM, reset before each case through /proc/self/clear_refs.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

from bigrec_jax import host

NEIGHBOURS = ("none", "one_core")


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any], *, repeats: int = 3,
          budget_s: float = 120.0, warmup: int = 1) -> dict[str, Any]:
  t0 = time.perf_counter()
  for _ in range(warmup):
    sync(fn())
  warm = time.perf_counter() - t0
  times: list[float] = []
  cpu: list[float] = []
  spent = 0.0
  while len(times) < repeats and (not times or spent + times[-1] <= budget_s):
    t, c = time.perf_counter(), time.process_time()
    out = sync(fn())
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    spent += times[-1]
  return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warm,
          "cpu_s": statistics.median(cpu), "last_output": out}


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """Peak resident set size since the last reset (VmHWM), else since process start."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_ram_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def host_info() -> dict[str, Any]:
  return {"cpu": host.cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
          "platform": platform.platform(), "ram_available_bytes": available_ram_bytes(),
          "load_average": list(os.getloadavg()), "allocator": host.describe_malloc(),
          # bfloat16 operands are fast only with these (host.resolve_matmul_dtype); empty on
          # AVX2-only CPUs, where --dtype=bfloat16_matmul is slower than float32 on both sides.
          "cpu_bfloat16_flags": host.cpu_bfloat16_flags(),
          # XLA:CPU flags move the JAX side's times (bigrec_jax/bench/results/README.md).
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def package_versions(names: list[str]) -> dict[str, str | None]:
  from importlib import metadata

  out: dict[str, str | None] = {}
  for n in names:
    try:
      out[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
      out[n] = None
  return out


# A busy loop that ends by itself (a bench killed hard leaves no spinning orphan behind).
_BUSY_LOOP = ("import sys, time\n"
              "end = time.monotonic() + float(sys.argv[1])\n"
              "while time.monotonic() < end:\n"
              "    pass\n")


@contextlib.contextmanager
def neighbour(kind: str, limit_s: float) -> Iterator[dict[str, Any] | None]:
  """The bench's "shared CPU" mode: with kind "one_core", a CPU-bound process pinned to the last
  core runs while the block runs (a user's other job, a CI neighbour), then is stopped; it stops
  itself after `limit_s` in any case. Yields what was started (None for "none")."""
  if kind not in NEIGHBOURS:
    raise ValueError(f"neighbour must be one of {NEIGHBOURS}, got {kind!r}")
  if kind == "none":
    yield None
    return
  core = max(os.sched_getaffinity(0))
  proc = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(limit_s)])
  try:
    os.sched_setaffinity(proc.pid, {core})
    yield {"kind": kind, "core": core, "pid": proc.pid}
  finally:
    proc.kill()
    proc.wait()
