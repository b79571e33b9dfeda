"""What the host brings that step times depend on: which malloc the process runs on (recorded in
bench.json and in every pipeline stage marker), and whether its CPU multiplies bfloat16 in
hardware (`model.matmul_dtype="auto"`).

Step times on CPU depend on it (BUILD.md, "Speed on CPU: tcmalloc"): `launch/setup.sh` preloads
tcmalloc when the machine has it; otherwise glibc's, with whatever GLIBC_TUNABLES the user set.
glibc settings that keep big buffers mapped (`mmap_max=0`, a 2 GiB+ trim threshold) were
measured and not made a default: within this CPU's noise (bigrec_jax/bench/results/README.md).
"""
from __future__ import annotations

import functools
import os
import platform


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


# CPU flags of a bfloat16 dot product in hardware: x86 AMX and AVX512-BF16 (/proc/cpuinfo
# "flags"), Arm's BF16 extension ("Features").
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return f.read()
  except OSError:
    return ""


def _cpuinfo_value(keys: tuple[str, ...], cpuinfo: str | None = None) -> str | None:
  """The value of the first /proc/cpuinfo line (or `cpuinfo`'s) whose key is one of `keys`."""
  for line in (_proc_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
    key, _, value = line.partition(":")
    if key.strip() in keys:
      return value.strip()
  return None


def cpu_model() -> str:
  """E.g. "AMD EPYC" (/proc/cpuinfo's model name; platform.processor() without one)."""
  return _cpuinfo_value(("model name",)) or platform.processor() or ""


def cpu_bfloat16_flags(cpuinfo: str | None = None) -> list[str]:
  """The bfloat16 dot-product flags in `cpuinfo` (default: this CPU's /proc/cpuinfo; empty: none,
  or no /proc)."""
  value = _cpuinfo_value(("flags", "Features"), cpuinfo) or ""
  return [flag for flag in _BF16_CPU_FLAGS if flag in value.split()]


def resolve_matmul_dtype(matmul_dtype: str, platform: str) -> str:
  """`model.matmul_dtype` with "auto" resolved for `platform` (jax.default_backend()).

  bfloat16 operands pay on accelerators and on CPUs with a bfloat16 dot in hardware (a demo
  training step 1.1-1.7x faster than in float32 with AVX512-BF16 or AMX); without one XLA:CPU
  widens them in software, and a demo step ran 1.5x slower than in float32 on an AVX2-only AMD
  EPYC (README, speed section). So "auto" is "bfloat16" there and "" (the compute dtype) on
  other CPUs.
  """
  if matmul_dtype != "auto":
    return matmul_dtype
  if platform != "cpu":
    return "bfloat16"
  return "bfloat16" if cpu_bfloat16_flags() else ""
