"""The sharded catalog: resumable shard embedding, placement from shards, 2-process grounding.

One pair of processes (2 x 4 fake CPU devices under jax.distributed on 127.0.0.1, shared by
every 2-process test) builds a 2,097,152-item catalog (catalog_cases.py) in 8 memory-mapped
shards after a build killed midway, places it and grounds on two meshes (catalog_worker.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.files import UserError
from bigrec_jax.ground import catalog_shards, embed, kernel

import catalog_cases as cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "catalog_worker.py")
MiB = 1 << 20
# Placement may hold, besides its share of the table and popularity, one device block (the
# host copy being placed) and this much for the runtime's own allocations and one mapped chunk.
PLACE_MARGIN = 48 * MiB


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([HERE, ROOT]))
  env.pop("XLA_FLAGS", None)
  return env


def _workers(catalog, out, *extra, kill=(None, None)):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    args = [sys.executable, WORKER, str(catalog), str(out), f"--process_id={i}",
            "--num_processes=2", f"--coordinator_address=127.0.0.1:{port}", *extra]
    if kill[i] is not None:
      args.append(f"--kill_at_shard={kill[i]}")
    procs.append(subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  for p in procs:
    try:
      o, e = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, o, e))
  return results


@pytest.fixture(scope="module")
def reference(two_process_run):
  """Exact numpy ranking of the integer catalog: squared distances, ties by lower id."""
  catalog = two_process_run[0]
  table = catalog_shards.ShardedCatalog(str(catalog)).read_all()
  np.testing.assert_array_equal(table[-5:], cases.embed_range(cases.NUM_ITEMS - 5, cases.NUM_ITEMS))
  q, t = cases.queries().astype(np.int64), cases.targets()
  ids = np.arange(len(table), dtype=np.int64)
  top, ranks = [], []
  e = table.astype(np.int64)
  norms = np.einsum("nd,nd->n", e, e)
  for i in range(len(q)):
    d = norms - 2 * e @ q[i] + q[i] @ q[i]
    key = d * len(table) + ids  # unique, same order as (distance, id)
    part = np.argpartition(key, cases.K)[:cases.K]
    top.append(part[np.argsort(key[part])])
    ranks.append(min(int((key < key[j]).sum()) for j in t[i] if j >= 0))
  return np.asarray(top), np.asarray(ranks)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """Each process's build is killed midway (SIGKILL, in a forked child), then the same two
  processes resume it under jax.distributed, place and ground."""
  tmp = tmp_path_factory.mktemp("catalog")
  catalog, out = tmp / "catalog", tmp / "result"
  # Process 0 owns shards 0-3 and its build dies starting shard 2; process 1 owns 4-7, dies at 5.
  results = _workers(catalog, out, kill=(2, 5))
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  stats = [json.loads((tmp / f"result.{i}.json").read_text()) for i in range(2)]
  res = [dict(np.load(tmp / f"result.{i}.npz")) for i in range(2)]
  return catalog, stats, res


@pytest.fixture(scope="module")
def single_process(two_process_run):
  """Injection and the gamma grid in this process on one device, from the whole table."""
  cat = catalog_shards.ShardedCatalog(str(two_process_run[0]))
  full = cat.read_all()
  items = kernel.place_items(full, cases.popularity(0, cases.NUM_ITEMS))
  placed = catalog_shards.place_catalog(cat, None, popularity=cases.popularity)
  np.testing.assert_array_equal(np.asarray(placed.scoring), np.asarray(items.scoring))
  np.testing.assert_array_equal(np.asarray(placed.popularity), np.asarray(items.popularity))
  del placed
  q, t, cf = cases.queries(), cases.targets(), cases.cf(0, cases.NUM_ITEMS)
  one = kernel.ground(q, items, k=cases.K, targets=t, cf=cf, gamma_pop=2.0, gamma_cf=0.5,
                      query_batch=cases.Q)
  grid = kernel.target_ranks_grid(q, items, t, cases.GRID, cf=cf, query_batch=cases.Q)
  return one, grid


def test_resume_builds_only_the_missing_shards(two_process_run):
  catalog, stats, _ = two_process_run
  assert [s["killed_by"] for s in stats] == [signal.SIGKILL] * 2
  assert stats[0]["done_after_kill"] == ["shard-00000.json", "shard-00001.json"]
  assert stats[1]["done_after_kill"] == ["shard-00004.json"]
  assert stats[0]["built"] == [2, 3] and stats[1]["built"] == [5, 6, 7]
  for s in stats:
    for name in s["done_after_kill"]:
      for f in (name, name.replace(".json", ".npy")):  # not rewritten
        assert os.stat(catalog / f).st_mtime_ns == s["mtimes_after_kill"][f], f
  manifest = catalog_shards.read_manifest(str(catalog))
  assert manifest["num_items"] == cases.NUM_ITEMS and manifest["dim"] == cases.DIM
  assert [s["hi"] - s["lo"] for s in manifest["shards"]] == [cases.NUM_ITEMS // 8] * 8
  # A third run in one process finds everything done and embeds nothing.
  built = catalog_shards.build_shards(
      str(catalog), cases.NUM_ITEMS, cases.DIM, lambda lo, hi: pytest.fail("re-embedded"),
      source="synthetic:catalog_cases", config=catalog_shards.config_hash(case="catalog_cases", v=1),
      process_index=0, process_count=1, log=lambda m: None)
  assert built == []


def test_each_process_reads_only_its_own_shards_within_its_memory_share(two_process_run):
  _, stats, _ = two_process_run
  for p, s in enumerate(stats):
    assert s["files_read"] == [f"shard-{i:05d}.npy" for i in range(4 * p, 4 * p + 4)]
    assert s["rows_read"] == cases.NUM_ITEMS // 2
    # The split mesh's table is replicated over data inside the process: still its own rows,
    # read once (one host block per item range, shared by the replicas).
    assert s["split_files_read"] == s["files_read"]
    assert s["split_rows_read"] == cases.NUM_ITEMS // 2
    share = s["local_table_bytes"] + cases.NUM_ITEMS // 2 * 4  # table rows + popularity
    block = s["local_table_bytes"] // s["local_devices"]
    grown = s["peak_rss_place"] - s["rss_before_place"]
    print(f"process {p}: placement peak RSS +{grown / MiB:.1f} MiB for a "
          f"{share / MiB:.1f} MiB share; whole run peak {s['peak_rss_total'] / MiB:.0f} MiB; "
          f"seconds per phase {s['phase_s']}")
    assert grown <= share + block + PLACE_MARGIN, (grown, share, block)
    # The whole table is 2 x the share; growing by less than that proves no full copy.
    assert grown < 2 * s["local_table_bytes"]


def test_two_processes_rank_exactly_like_the_numpy_reference(two_process_run, reference):
  _, _, res = two_process_run
  top, ranks = reference
  for r in res:  # both processes hold the same replicated results
    np.testing.assert_array_equal(r["plain_ids"], top)
    np.testing.assert_array_equal(r["plain_ranks"], ranks)
  for key in res[0]:
    np.testing.assert_array_equal(res[0][key], res[1][key], err_msg=key)


def test_two_processes_equal_the_single_process_kernel(two_process_run, single_process):
  """Popularity and CF injection: identical to one process, one device (the grid: below)."""
  _, _, res = two_process_run
  one, _ = single_process
  np.testing.assert_array_equal(res[0]["inj_ids"], one.top_ids)
  np.testing.assert_array_equal(res[0]["inj_ranks"], one.target_ranks)
  np.testing.assert_allclose(res[0]["inj_scores"], one.top_scores, rtol=1e-6, atol=1e-7)
  assert (res[0]["inj_ids"] != res[0]["plain_ids"]).any()  # injection really reorders


def test_query_rows_split_over_data_rank_like_one_process(two_process_run, reference,
                                                          single_process):
  """Items over fsdp (across both processes), query rows over data: the same results (the
  gamma grid, ranks for 4 gamma pairs with popularity and CF, is checked on this mesh)."""
  _, stats, res = two_process_run
  for s in stats:
    assert s["query_axes"] == []  # default rules: the items span every device
    assert s["split_item_axes"] == ["fsdp"] and s["split_query_axes"] == ["data"]
  top, ranks = reference
  _, grid = single_process
  np.testing.assert_array_equal(res[0]["split_plain_ids"], top)
  np.testing.assert_array_equal(res[0]["split_plain_ranks"], ranks)
  np.testing.assert_array_equal(res[0]["split_grid"], grid)


# ----------------------------------------------------------------------------- in-process

def _build(directory, table, **kw):
  return catalog_shards.build_shards(
      str(directory), len(table), table.shape[1], lambda lo, hi: table[lo:hi], source="test",
      config="c1", log=lambda m: None, **kw)


def test_bfloat16_shards_rank_the_rounded_catalog_exactly(tmp_path):
  import ml_dtypes

  rng = np.random.default_rng(3)
  table = rng.normal(size=(1000, 16)).astype(np.float32)
  _build(tmp_path, table, num_shards=3, dtype="bfloat16", process_index=0, process_count=1)
  cat = catalog_shards.ShardedCatalog(str(tmp_path))
  assert np.load(tmp_path / "shard-00000.npy").dtype == np.uint16
  rounded = table.astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(cat.read_all(), rounded)
  assert (rounded != table).any()
  q = rng.normal(size=(8, 16)).astype(np.float32)
  placed, reference = catalog_shards.place_catalog(cat), kernel.place_items(rounded, np.zeros(1000))
  np.testing.assert_array_equal(np.asarray(placed.scoring), np.asarray(reference.scoring))
  got = kernel.ground(q, placed, k=10, targets=np.arange(8))
  want = kernel.ground(q, reference, k=10, targets=np.arange(8))
  np.testing.assert_array_equal(got.top_ids, want.top_ids)
  np.testing.assert_array_equal(got.target_ranks, want.target_ranks)


def test_a_directory_of_another_config_is_refused_and_missing_shards_are_named(tmp_path):
  table = np.ones((10, 4), np.float32)
  _build(tmp_path, table, num_shards=2, process_index=0, process_count=2)  # shard 0 only
  with pytest.raises(UserError, match="shard-00001.*not built"):
    catalog_shards.ShardedCatalog(str(tmp_path))
  with pytest.raises(UserError, match="config_hash"):
    catalog_shards.build_shards(str(tmp_path), 10, 4, lambda lo, hi: table[lo:hi], source="test",
                                config="c2", process_index=1, process_count=2)
  with pytest.raises(UserError, match="dtype"):
    _build(tmp_path / "x", table, dtype="float16", process_index=0, process_count=1)
  # A shard whose record was lost (killed between the .npy and the .json) is rebuilt.
  assert _build(tmp_path, table, process_index=1, process_count=2) == [1]
  os.remove(tmp_path / "shard-00001.json")
  assert _build(tmp_path, table, process_index=0, process_count=1) == [1]


def test_real_model_shards_equal_one_process_embedding(smollm2, tmp_path):
  """SmolLM2 embeddings of 24 real ML-100K titles, built by 2 'processes' in turn and resumed."""
  from bigrec_jax import assets
  from bigrec_jax.data import movielens

  d = assets.ml100k_dir()
  titles = movielens.read_ml100k(os.path.join(d, "ml-100k.inter"),
                                 os.path.join(d, "ml-100k.item")).titles[:24]
  logs = []
  built = [catalog_shards.embed_catalog_shards(smollm2, titles, str(tmp_path), num_shards=4,
                                               process_index=p, process_count=2, batch_size=4,
                                               log=logs.append, progress=False)
           for p in range(2)]
  assert built == [[0, 1], [2, 3]]
  again = catalog_shards.embed_catalog_shards(smollm2, titles, str(tmp_path), num_shards=4,
                                              process_index=0, process_count=1, batch_size=4,
                                              progress=False)
  assert again == []
  manifest = catalog_shards.read_manifest(str(tmp_path))
  assert manifest["source"] == os.path.abspath(smollm2.source)
  assert manifest["dim"] == smollm2.config.hidden_size
  got = catalog_shards.ShardedCatalog(str(tmp_path)).read_all()
  want = embed.embed_texts(smollm2, titles, batch_size=4, progress=False)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Other titles for shard 3 (same model and options): only that shard is embedded again.
  changed = titles[:-1] + ["Heat"]
  assert catalog_shards.embed_catalog_shards(smollm2, changed, str(tmp_path), num_shards=4,
                                             process_index=0, process_count=1, batch_size=4,
                                             progress=False) == [3]


def test_build_catalog_launcher_refuses_a_missing_titles_file(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "build_catalog.py"),
                         f"--titles={tmp_path / 'none.txt'}", f"--out_dir={tmp_path / 'cat'}"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "--titles" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "cat").exists()


def test_multiprocess_ground_bench_reports_rate_and_rss_per_process(tmp_path):
  """launch/bench.py --multiprocess_ground at a tiny size: 2 processes, then 1 process x 8
  devices on the same shards, every field measured. 32 queries = one batch: the warm-up call
  compiles the timed call's program."""
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench.py"),
                         "--multiprocess_ground", "--mp_items=50000", "--mp_dim=8",
                         "--mp_queries=32", "--repeats=1", f"--out={out}"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  bench = json.loads(out.read_text())
  assert "launch/bench.py" in bench["command"] and bench["machine"]["cores"] >= 1
  for key, processes, devices in (("ground_multiprocess", 2, 4), ("ground_single_process", 1, 8)):
    r = bench[key]
    assert r["processes"] == processes and len(r["per_process"]) == processes
    assert sorted(p["process"] for p in r["per_process"]) == list(range(processes))
    for p in r["per_process"]:
      assert p["devices"] == devices and p["queries_per_s"] > 0 and p["peak_rss_mib"] > 0
      assert p["peak_rss_place_mib"] <= p["peak_rss_mib"]
      assert p["warmup_rows"] == 32 and p["compile_s"] == 0  # compiled by the warm-up
      assert p["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and p["item_axes"] == ["data"]
    assert r["queries_per_s"] == min(p["queries_per_s"] for p in r["per_process"])
