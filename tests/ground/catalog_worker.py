"""One process of the sharded-catalog tests (test_catalog_shards.py); 4 fake CPU devices each.

  python catalog_worker.py CATALOG_DIR OUT_PREFIX --process_id=I --num_processes=P
      --coordinator_address=HOST:PORT [--kill_at_shard=S] [--dtype=bfloat16]

--kill_at_shard: first a forked child (no JAX backend exists yet) embeds this process's shards
and SIGKILLs itself when it starts shard S (a crash mid-build); the process records which of its
shards that left finished. Then it joins jax.distributed, builds (resuming), places the table
from the shards on a (-1, 1, 1) mesh (the item axis over all 8 devices of both processes) and
grounds (plain, injection); then again (plain, the gamma grid) on a (data=2, fsdp=4) mesh with
the items over fsdp (spanning both processes) and the query rows split over data (2 indices
inside each process). Writes OUT_PREFIX.<id>.npz /
.json with the results, the shard files each placement opened and the peak RSS.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           + os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

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
  ap.add_argument("--kill_at_shard", type=int, default=-1)
  ap.add_argument("--dtype", default="float32")
  a = ap.parse_args()

  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from bigrec_jax import parallel
  from bigrec_jax.ground import catalog_shards, kernel

  per = -(-cases.NUM_ITEMS // cases.NUM_SHARDS)

  def build(kill_at: int = -1):
    def embed(lo, hi):
      if lo == kill_at * per:
        os.kill(os.getpid(), signal.SIGKILL)
      return cases.embed_range(lo, hi)

    return catalog_shards.build_shards(
        a.catalog, cases.NUM_ITEMS, cases.DIM, embed, source="synthetic:catalog_cases",
        config=catalog_shards.config_hash(case="catalog_cases", v=1),
        num_shards=cases.NUM_SHARDS, dtype=a.dtype, process_index=a.process_id,
        process_count=a.num_processes, log=lambda m: None)

  stats, phase, t0 = {}, {}, [time.perf_counter()]

  def lap(name):  # wall seconds per phase (what the test costs, where)
    now = time.perf_counter()
    phase[name], t0[0] = round(now - t0[0], 2), now

  own_lo = a.process_id * cases.NUM_ITEMS // a.num_processes
  own_hi = (a.process_id + 1) * cases.NUM_ITEMS // a.num_processes
  own_cf = []

  def cf(lo, hi):  # CF columns; this process's own range hashed once for both meshes
    if not own_lo <= lo <= hi <= own_hi:
      return cases.cf(lo, hi)
    if not own_cf:
      own_cf.append(cases.cf(own_lo, own_hi))
    return own_cf[0][:, lo - own_lo:hi - own_lo]

  if a.kill_at_shard >= 0:
    pid = os.fork()
    if pid == 0:  # the crashing build; exit code 3 if the kill never came
      try:
        build(a.kill_at_shard)
      finally:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    stats["killed_by"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
    shards = [catalog_shards.ShardSpec(i, s["lo"], s["hi"]) for i, s in
              enumerate(catalog_shards.read_manifest(a.catalog)["shards"])]
    own = catalog_shards.shards_of_process(shards, a.process_id, a.num_processes)
    names = sorted(f for f in os.listdir(a.catalog)
                   if f.startswith("shard-") and int(f[6:11]) in {s.index for s in own})
    stats["done_after_kill"] = [f for f in names if f.endswith(".json")]
    stats["mtimes_after_kill"] = {f: os.stat(os.path.join(a.catalog, f)).st_mtime_ns
                                  for f in names}

  lap("killed_build")
  parallel.maybe_initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
  assert jax.process_count() == a.num_processes and jax.device_count() == 4 * a.num_processes
  stats["built"] = build()
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices("catalog built")
  lap("resumed_build")
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
  stats["query_axes"] = list(items.query_axes)
  lap("place")

  q, t = cases.queries(), cases.targets()
  out = {}
  r = kernel.ground(q, items, k=cases.K, targets=t, query_batch=cases.Q)
  out.update(plain_ids=r.top_ids, plain_scores=r.top_scores, plain_ranks=r.target_ranks)
  lap("plain")
  cf_cols = catalog_shards.place_cf(cf, cases.Q, items)
  lap("place_cf")
  r = kernel.ground(q, items, k=cases.K, targets=t, cf=cf_cols, gamma_pop=2.0, gamma_cf=0.5,
                    query_batch=cases.Q)
  out.update(inj_ids=r.top_ids, inj_scores=r.top_scores, inj_ranks=r.target_ranks)
  lap("injection")
  stats["peak_rss_total"] = _status("VmHWM")
  del items, cf_cols

  # Data-parallel replicas of the sharded table: mesh[data d, fsdp f] is device 2 (f % 2) + d of
  # process f // 2, so the items (over fsdp) span both processes and the rows (over data) split
  # between two devices of each process. The queries arrive already split over data.
  devices = np.asarray(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))
  devices = devices.reshape(a.num_processes, 2, 2).transpose(2, 0, 1).reshape(-1)
  split_mesh = parallel.make_mesh((2, 4, 1), devices=list(devices))
  split_catalog = catalog_shards.ShardedCatalog(a.catalog)
  with parallel.logical_rules({"items": "fsdp,tensor"}):
    split = catalog_shards.place_catalog(split_catalog, split_mesh, popularity=cases.popularity)
  stats["split_item_axes"], stats["split_query_axes"] = list(split.item_axes), list(split.query_axes)
  stats["split_files_read"] = [os.path.basename(p) for p in split_catalog.files_read]
  stats["split_rows_read"] = split_catalog.rows_read
  lap("split_place")
  q_rows = jax.device_put(q, NamedSharding(split_mesh, P("data")))
  r = kernel.ground(q_rows, split, k=cases.K, targets=t, query_batch=cases.Q)
  out.update(split_plain_ids=r.top_ids, split_plain_ranks=r.target_ranks)
  lap("split_plain")
  # The gamma grid (injection's keys and ranks for 4 gamma pairs, CF columns split over data
  # too) here only: on the first mesh injection already runs the same keys and rank sums.
  cf_cols = catalog_shards.place_cf(cf, cases.Q, split)
  out["split_grid"] = kernel.target_ranks_grid(q, split, t, cases.GRID, cf=cf_cols,
                                               query_batch=cases.Q)
  lap("split_grid")
  stats["phase_s"] = phase
  np.savez(f"{a.out}.{a.process_id}.npz", **out)
  with open(f"{a.out}.{a.process_id}.json", "w") as f:
    json.dump(stats, f)


if __name__ == "__main__":
  main()
