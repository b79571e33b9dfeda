"""Which malloc the process runs on, as recorded in bench.json and in every pipeline stage marker.

Step times on CPU depend on it (BUILD.md, "Speed on CPU: tcmalloc"): `launch/setup.sh` preloads
tcmalloc when the machine has it; otherwise glibc's, with whatever GLIBC_TUNABLES the user set.
glibc settings that keep big buffers mapped (`mmap_max=0`, a 2 GiB+ trim threshold) were
measured and not made a default: within this CPU's noise (bigrec_jax/bench/results/README.md).
"""
from __future__ import annotations

import os


def malloc_in_use() -> str:
  """tcmalloc / jemalloc when preloaded, else glibc ("unknown" without /proc)."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return "unknown"
  for name in ("tcmalloc", "jemalloc"):
    if name in maps:
      return name
  return "glibc"


def describe_malloc() -> str:
  """E.g. "tcmalloc", "glibc", "glibc (GLIBC_TUNABLES=glibc.malloc.mmap_max=0)"."""
  name = malloc_in_use()
  tunables = os.environ.get("GLIBC_TUNABLES")
  return f"{name} (GLIBC_TUNABLES={tunables})" if name == "glibc" and tunables else name
