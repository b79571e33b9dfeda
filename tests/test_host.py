"""bigrec_jax/host.py: the malloc recorded in bench.json and the stage markers."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _described(**env):
  base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  r = subprocess.run([sys.executable, "-c", "from bigrec_jax import host; "
                      "print(host.describe_malloc())"], cwd=ROOT, capture_output=True,
                     text=True, timeout=120, env={**base, **env})
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.strip()


def test_describes_glibc_with_its_tunables_and_a_preloaded_tcmalloc():
  assert _described() == "glibc"
  tunables = "glibc.malloc.mmap_max=0"
  assert _described(GLIBC_TUNABLES=tunables) == f"glibc (GLIBC_TUNABLES={tunables})"
  lib = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
  if os.path.exists(lib):  # machines without it (a fresh clone's) check the glibc cases only
    assert _described(LD_PRELOAD=lib) == "tcmalloc"
