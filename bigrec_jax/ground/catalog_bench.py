"""Multi-process grounding bench: P processes ground Q queries against an N-item sharded catalog.

  python launch/bench.py --multiprocess_ground [--mp_items=10000000 --mp_dim=16 --mp_queries=5000]
      [--mp_query_batch=32]   (rows per batch; 0 = kernel.auto_query_batch)

The parent starts P worker processes (this module, `--worker`) under jax.distributed on
127.0.0.1 (on CPU each gets `devices_per_process` fake devices). Each worker builds its own
block of a random float32 catalog as shards (catalog_shards.build_shards), places the table from
its shards, grounds one query batch to warm up and then all queries (top-K + target rank, plain L2)
`repeats` times timed (compile time measured and left out), and reports queries/s and its peak
RSS (VmHWM) after placement and after grounding. `run_with_single_process` then runs one process
with all P x devices_per_process devices on the same shards: the single-process case next to it.
On a TPU slice / GPU cluster run `--worker` yourself on every host (BUILD.md, "A catalog no
single host holds"): `--mesh` and `--item_axes` choose the layout (e.g. --mesh=2,-1,1
--item_axes=fsdp,tensor: two replicas of the table, the query rows split between them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np


def _vm(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return -1


def _worker(a) -> None:
  import jax

  from bigrec_jax import parallel
  from bigrec_jax.ground import catalog_shards, kernel

  parallel.maybe_initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
  from jax.experimental import multihost_utils

  def embed(lo, hi):
    return np.random.default_rng([a.seed, lo]).standard_normal((hi - lo, a.dim), np.float32)

  t0 = time.perf_counter()
  catalog_shards.build_shards(a.catalog, a.items, a.dim, embed, source="synthetic:normal",
                              config=catalog_shards.config_hash(seed=a.seed), dtype=a.dtype,
                              num_shards=a.num_shards or None, log=lambda m: None)
  multihost_utils.sync_global_devices("built")
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  mesh = parallel.make_mesh(tuple(int(x) for x in a.mesh.split(",")))
  rules = parallel.logical_rules({"items": a.item_axes}) if a.item_axes else contextlib.nullcontext()
  with rules:
    items = catalog_shards.place_catalog(a.catalog, mesh)
  jax.block_until_ready(items.scoring)
  place_s, rss_place = time.perf_counter() - t0, _vm("VmHWM")
  rng = np.random.default_rng(a.seed + 1)
  q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
  t = rng.integers(0, a.items, size=a.queries).astype(np.int32)
  qb = a.query_batch or None
  compile_s = [0.0]

  def on_event(event, seconds, **kw):
    if event.startswith("/jax/core/compile/"):
      compile_s[0] += seconds

  jax.monitoring.register_event_duration_secs_listener(on_event)
  # Warm-up (runtime, collectives) on one query batch; the full call then compiles its own
  # program, whose compile time is measured and left out of `seconds` (a full warm-up call
  # would double the bench's run time at 5000 x 10M on a small machine).
  warm = min(a.queries, a.query_batch or kernel.MIN_QUERY_BATCH)
  t0 = time.perf_counter()
  kernel.ground(q[:warm], items, k=a.k, targets=t[:warm], query_batch=qb)
  first_s = time.perf_counter() - t0
  times, compiles = [], []
  for _ in range(max(1, a.repeats)):
    compile_s[0] = 0.0
    t0 = time.perf_counter()
    kernel.ground(q, items, k=a.k, targets=t, query_batch=qb)
    compiles.append(compile_s[0])
    times.append(time.perf_counter() - t0 - compile_s[0])
  sec = float(np.median(times))
  out = {"process": jax.process_index(), "devices": jax.local_device_count(),
         "mesh": dict(mesh.shape), "item_axes": list(items.item_axes),
         "query_axes": list(items.query_axes),
         "build_s": round(build_s, 2), "place_s": round(place_s, 2),
         "warmup_rows": warm, "warmup_call_s": round(first_s, 2),
         "compile_s": round(compiles[0], 2), "timed_calls": len(times), "seconds": round(sec, 3),
         "queries_per_s": round(a.queries / sec, 1), "peak_rss_place_mib": rss_place >> 20,
         "peak_rss_mib": _vm("VmHWM") >> 20,
         "local_table_mib": sum(s.data.nbytes for s in items.scoring.addressable_shards) >> 20}
  print("RESULT " + json.dumps(out), flush=True)


def run_multiprocess_ground(*, items: int = 10_000_000, dim: int = 16, queries: int = 5000,
                            processes: int = 2, devices_per_process: int = 4, k: int = 50,
                            repeats: int = 1, dtype: str = "float32", query_batch: int = 0,
                            catalog_dir: str | None = None,
                            timeout_s: float = 3600, log=print) -> dict:
  """Runs the workers and returns {"case", per-process results, queries/s of the slowest}."""
  own = catalog_dir is None
  catalog_dir = catalog_dir or tempfile.mkdtemp(prefix="bigrec_catalog_bench_")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.setdefault("JAX_PLATFORMS", "cpu")
  if env["JAX_PLATFORMS"] == "cpu":
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
  args = [f"--items={items}", f"--dim={dim}", f"--queries={queries}", f"--k={k}",
          f"--repeats={repeats}", f"--dtype={dtype}", f"--query_batch={query_batch}", f"--catalog={catalog_dir}",
          f"--num_processes={processes}", f"--coordinator_address=127.0.0.1:{port}"]
  procs = [subprocess.Popen([sys.executable, "-m", "bigrec_jax.ground.catalog_bench", "--worker",
                             f"--process_id={i}", *args], env=env, cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout_s)
      if p.returncode != 0:
        raise RuntimeError(f"bench worker failed (exit {p.returncode}): {err[-3000:]}")
      results.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    if own:
      shutil.rmtree(catalog_dir, ignore_errors=True)
  case = f"ground {queries} x {items:,}, d={dim}, {processes} processes x {devices_per_process} devices"
  rate = min(r["queries_per_s"] for r in results)
  for r in results:
    log(f"[bench] {case}: process {r['process']}: {r['queries_per_s']} queries/s, "
        f"peak RSS {r['peak_rss_mib']} MiB (after placement {r['peak_rss_place_mib']} MiB, "
        f"table share {r['local_table_mib']} MiB)")
  return {"case": case, "items": items, "dim": dim, "queries": queries, "processes": processes,
          "devices_per_process": devices_per_process, "dtype": dtype,
          "query_batch": query_batch or "auto", "queries_per_s": rate,
          "per_process": results}


def run_with_single_process(*, processes: int = 2, devices_per_process: int = 4,
                            single_process: bool = True, log=print, **kw) -> dict:
  """The P-process case and (single_process) one process x P * devices_per_process devices on
  the same catalog (built once): {"ground_multiprocess": ..., "ground_single_process": ...}."""
  catalog_dir = tempfile.mkdtemp(prefix="bigrec_catalog_bench_")
  try:
    out = {"ground_multiprocess": run_multiprocess_ground(
        processes=processes, devices_per_process=devices_per_process, catalog_dir=catalog_dir,
        log=log, **kw)}
    if single_process and processes > 1:
      out["ground_single_process"] = run_multiprocess_ground(
          processes=1, devices_per_process=processes * devices_per_process,
          catalog_dir=catalog_dir, log=log, **kw)
  finally:
    shutil.rmtree(catalog_dir, ignore_errors=True)
  return out


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--worker", action="store_true")
  ap.add_argument("--items", type=int, default=10_000_000)
  ap.add_argument("--dim", type=int, default=16)
  ap.add_argument("--queries", type=int, default=5000)
  ap.add_argument("--k", type=int, default=50)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--query_batch", type=int, default=0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--catalog", default=None, help="The sharded catalog directory (built if "
                  "missing; on a cluster a path every host sees).")
  ap.add_argument("--num_shards", type=int, default=0, help="0: about 2^20 items each.")
  ap.add_argument("--mesh", default="-1,1,1", help="(data, fsdp, tensor) mesh shape.")
  ap.add_argument("--item_axes", default="", help="Mesh axes of the item table (default: "
                  "every axis); e.g. fsdp,tensor: rows split over data.")
  ap.add_argument("--process_id", type=int, default=0)
  ap.add_argument("--num_processes", type=int, default=2)
  ap.add_argument("--devices_per_process", type=int, default=4)
  ap.add_argument("--coordinator_address", default="")
  a = ap.parse_args()
  if a.worker:
    if not a.catalog:
      ap.error("--worker needs --catalog=DIR")
    _worker(a)
  else:
    print(json.dumps(run_multiprocess_ground(
        items=a.items, dim=a.dim, queries=a.queries, processes=a.num_processes,
        devices_per_process=a.devices_per_process, k=a.k,
        repeats=a.repeats, dtype=a.dtype, query_batch=a.query_batch, catalog_dir=a.catalog), indent=2))


if __name__ == "__main__":
  main()
