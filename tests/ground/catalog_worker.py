"""One process of the sharded-catalog tests (test_catalog_shards.py); 4 fake CPU devices each.

  python catalog_worker.py CATALOG_DIR OUT_PREFIX --process_id=I --num_processes=P
      [--coordinator_address=HOST:PORT] [--build_only] [--kill_at_shard=S] [--dtype=bfloat16]

--build_only: embed this process's shards and exit (no jax.distributed); --kill_at_shard: the
process SIGKILLs itself when it starts embedding that shard (a crash mid-build). Otherwise:
build (resuming), place from the shards, ground, and write OUT_PREFIX.<id>.npz / .json with the
results, the shard files this process opened and its peak RSS.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           + os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402

import numpy as np  # noqa: E402

import catalog_cases as cases  # noqa: E402


def _status(field: str) -> int:
  """VmRSS / VmHWM of this process in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("catalog")
  ap.add_argument("out")
  ap.add_argument("--process_id", type=int, default=0)
  ap.add_argument("--num_processes", type=int, default=1)
  ap.add_argument("--coordinator_address", default="")
  ap.add_argument("--build_only", action="store_true")
  ap.add_argument("--kill_at_shard", type=int, default=-1)
  ap.add_argument("--dtype", default="float32")
  a = ap.parse_args()

  import jax
  from bigrec_jax import parallel
  from bigrec_jax.ground import catalog_shards, kernel

  if not a.build_only:
    parallel.maybe_initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
    assert jax.process_count() == a.num_processes and jax.device_count() == 4 * a.num_processes

  per = -(-cases.NUM_ITEMS // cases.NUM_SHARDS)

  def embed(lo, hi):
    if lo == a.kill_at_shard * per:
      os.kill(os.getpid(), signal.SIGKILL)
    return cases.embed_range(lo, hi)

  built = catalog_shards.build_shards(
      a.catalog, cases.NUM_ITEMS, cases.DIM, embed, source="synthetic:catalog_cases",
      config=catalog_shards.config_hash(case="catalog_cases", v=1), num_shards=cases.NUM_SHARDS,
      dtype=a.dtype, process_index=a.process_id, process_count=a.num_processes, log=lambda m: None)
  stats = {"built": built}
  if a.build_only:
    print(json.dumps(stats))
    return
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices("catalog built")
  with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
    f.write("5")
  stats["rss_before_place"] = _status("VmRSS")
  mesh = parallel.make_mesh((-1, 1, 1))
  catalog = catalog_shards.ShardedCatalog(a.catalog)
  items = catalog_shards.place_catalog(catalog, mesh, popularity=cases.popularity)
  jax.block_until_ready((items.scoring, items.popularity))
  stats["peak_rss_place"] = _status("VmHWM")
  stats["files_read"] = [os.path.basename(p) for p in catalog.files_read]
  stats["rows_read"] = catalog.rows_read
  stats["local_table_bytes"] = sum(s.data.nbytes for s in items.scoring.addressable_shards)
  stats["local_devices"] = jax.local_device_count()

  q, t = cases.queries(), cases.targets()
  out = {}
  r = kernel.ground(q, items, k=cases.K, targets=t, query_batch=cases.Q)
  out.update(plain_ids=r.top_ids, plain_scores=r.top_scores, plain_ranks=r.target_ranks)
  cf = catalog_shards.place_cf(cases.cf, cases.Q, items)
  r = kernel.ground(q, items, k=cases.K, targets=t, cf=cf, gamma_pop=2.0, gamma_cf=0.5,
                    query_batch=cases.Q)
  out.update(inj_ids=r.top_ids, inj_scores=r.top_scores, inj_ranks=r.target_ranks)
  out["grid"] = kernel.target_ranks_grid(q, items, t, cases.GRID, cf=cf, query_batch=cases.Q)
  stats["peak_rss_total"] = _status("VmHWM")
  np.savez(f"{a.out}.{a.process_id}.npz", **out)
  with open(f"{a.out}.{a.process_id}.json", "w") as f:
    json.dump(stats, f)


if __name__ == "__main__":
  main()
