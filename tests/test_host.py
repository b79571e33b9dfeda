"""bigrec_jax/host.py: the malloc recorded in bench.json and the stage markers; the matmul dtype
`auto` resolves to."""
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


# /proc/cpuinfo "flags" lines of real CPUs, shortened: this AVX2-only AMD EPYC (Zen 3), an AMD
# EPYC with AVX512-BF16 (Zen 4), a Sapphire Rapids Xeon (AMX); and an Arm "Features" line.
_ZEN3 = "flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni\n"
_ZEN4 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
_SPR = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
_ARM = "Features\t: fp asimd aes sha2 bf16 i8mm sve\n"


def test_auto_matmul_dtype_is_bfloat16_only_where_the_host_multiplies_it(monkeypatch):
  from bigrec_jax import host

  assert host.cpu_bfloat16_flags(_ZEN3) == []
  assert host.cpu_bfloat16_flags(_ZEN4) == ["avx512_bf16"]
  assert host.cpu_bfloat16_flags(_SPR) == ["amx_bf16", "avx512_bf16"]
  assert host.cpu_bfloat16_flags(_ARM) == ["bf16"]
  assert host.cpu_bfloat16_flags("processor\t: 0\n") == []
  parse = host.cpu_bfloat16_flags
  for cpuinfo, auto in ((_ZEN3, ""), (_ZEN4, "bfloat16"), (_SPR, "bfloat16"), (_ARM, "bfloat16")):
    monkeypatch.setattr(host, "cpu_bfloat16_flags", lambda text=cpuinfo: parse(text))
    assert host.resolve_matmul_dtype("auto", "cpu") == auto, cpuinfo
  # An explicit choice is kept on every host; auto on accelerators is bfloat16.
  for value in ("", "float32", "bfloat16"):
    assert host.resolve_matmul_dtype(value, "cpu") == value
  assert host.resolve_matmul_dtype("auto", "gpu") == host.resolve_matmul_dtype("auto", "tpu") == (
      "bfloat16")


def test_the_loaded_model_and_the_config_check_take_auto():
  """load_model resolves auto for this host (the demo's setting); the config check names it."""
  import jax

  from bigrec_jax import config as config_lib, host
  from bigrec_jax.files import UserError
  from bigrec_jax.model import load_model
  from configs import demo

  c = demo.get_config()
  assert c.model.matmul_dtype == "auto"
  config_lib.check(c, need_data=False)
  model = load_model(matmul_dtype="auto")
  assert model.config.matmul_dtype == host.resolve_matmul_dtype("auto", jax.default_backend())
  assert model.config.matmul_dtype in ("", "bfloat16")
  c.model.matmul_dtype = "fastest"
  try:
    config_lib.check(c, need_data=False)
  except UserError as e:
    assert "--config.model.matmul_dtype" in str(e) and "'auto'" in str(e)
  else:
    raise AssertionError("matmul_dtype='fastest' was accepted")
