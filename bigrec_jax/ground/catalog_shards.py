"""A catalog no single host holds: embed it in shards, place it from shards, ground across processes.

Layout of a sharded catalog directory (one per model x catalog; any size):

  manifest.json          {"format", "num_items", "dim", "dtype", "source", "config_hash",
                          "shards": [{"file", "lo", "hi"}, ...]}   (written before any shard)
  shard-00000.npy        rows [lo, hi) of the embedding table, [hi - lo, dim], float32 or
                         bfloat16 (bfloat16 is stored as its uint16 bit pattern)
  shard-00000.json       the shard's own record: lo, hi, dim, dtype, source, config_hash and
                         the hash of its titles; written after the .npy, so it marks the shard done

Shards are contiguous item ranges of equal size (the last one shorter). Process p of P builds
the shards [p * S / P, (p + 1) * S / P), i.e. its own contiguous block of items, so the block it
embeds is the block its devices hold when the table is placed (the item axis is laid out over
the mesh in process order). Every file goes through files.atomic_path; a rerun (after a kill, a
preemption, a bigger cluster) embeds only the shards whose .json record is missing or does not
match the manifest, whatever process count it runs with.

Placement (`place_catalog`) builds the kernel's ItemTable, the padded [N_pad, D + 1] scoring
rows [2 e, -||e||^2], one device block at a time, from only the shards that overlap that block,
copied one chunk (CHUNK_BYTES of float32 rows) at a time through files.npy_rows: a local shard's
np.load(mmap_mode="r") mapping is dropped once copied, so mapped file pages do not pile up in
the process's RSS; a shard on an object store (gs://) is read by byte range. No process reads
a row another process's devices hold; its peak host memory is its share of the table plus one
device block (plus one chunk). Popularity [N] and CF scores [Q, N] are placed the same way
(`place_item_vector`, `place_cf`), from anything that slices (a memory-mapped .npy) or a callable
that returns an item range, so every per-item signal follows the same item sharding.

Storage dtype: float32 or bfloat16 shards. bfloat16 halves the shards on disk and what each host
reads; the rows are widened to float32 when placed and every distance, min-max, top-K and rank is
computed in float32, exactly as for a float32 catalog. What changes is the catalog itself: each
component is rounded to 8 significant bits (relative error <= 2^-9), so distances move by up to
~0.4% of |e| and items closer than that may swap. The ranks are then the exact all-rank ranks of
the rounded catalog, not of the float32 one; keep float32 shards where the paper's protocol must
be reproduced to the last rank (integer-valued or already-bf16 embeddings are unaffected).

Grounding across processes is the kernel itself (`kernel.ground`, `kernel.target_ranks_grid`) on
a mesh over all devices of all processes: every process passes the same queries and targets, the
item shards never move, the per-shard top-K are merged exactly and the target counts summed; the
results are replicated, so every process gets the same numpy arrays as a single-process run.
Placed under `parallel.logical_rules({"items": "fsdp,tensor"})` (config mesh.rules.items) on a
mesh with data > 1, the table is sharded over fsdp x tensor, replicated over data, and the query
rows split over data (kernel.query_axes_of): data-parallel replicas of a sharded catalog; each
process still reads only the rows its devices hold, once per process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bigrec_jax import files
from bigrec_jax.files import UserError
from bigrec_jax.ground import kernel

FORMAT = "bigrec_jax.catalog_shards/1"
MANIFEST = "manifest.json"
DTYPES = ("float32", "bfloat16")
DEFAULT_ROWS_PER_SHARD = 1 << 20
CHUNK_BYTES = 16 << 20  # float32 bytes of one chunk read from a shard (d4096: 1024 rows)


def chunk_rows_for(dim: int) -> int:
  return max(256, CHUNK_BYTES // (4 * max(1, dim)))


def _bf16():
  import ml_dtypes

  return ml_dtypes.bfloat16


@dataclasses.dataclass(frozen=True)
class ShardSpec:
  index: int
  lo: int
  hi: int

  @property
  def name(self) -> str:
    return f"shard-{self.index:05d}"


def shard_ranges(num_items: int, num_shards: int) -> list[ShardSpec]:
  """Contiguous item ranges of ceil(N / S) rows each (the last one shorter; none empty)."""
  if num_items < 1 or num_shards < 1:
    raise UserError(f"a sharded catalog needs >= 1 item and >= 1 shard, got {num_items}, "
                    f"{num_shards}")
  per = -(-num_items // num_shards)
  return [ShardSpec(s, s * per, min(num_items, (s + 1) * per))
          for s in range(num_shards) if s * per < num_items]


def default_num_shards(num_items: int, process_count: int,
                       rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> int:
  """About rows_per_shard items each, a multiple of the process count (whole blocks each)."""
  s = max(1, -(-num_items // rows_per_shard))
  return -(-s // process_count) * process_count


def shards_of_process(shards: Sequence[ShardSpec], process_index: int,
                      process_count: int) -> list[ShardSpec]:
  """Process p's contiguous block of shards: [p * S / P, (p + 1) * S / P)."""
  s = len(shards)
  return list(shards[process_index * s // process_count:(process_index + 1) * s // process_count])


def config_hash(**fields) -> str:
  """A short hash of what the embeddings mean (model fingerprint, embedding options, ...)."""
  blob = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def titles_hash(titles: Sequence[str]) -> str:
  h = hashlib.sha256()
  for t in titles:
    h.update(t.encode("utf-8") + b"\0")
  return h.hexdigest()[:24]


# ----------------------------------------------------------------------------- building

def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  m = files.read_json(path)
  if not isinstance(m, dict) or m.get("format") != FORMAT:
    raise UserError(f"{path}: not a sharded catalog manifest (format {FORMAT})")
  return m


def _manifest(num_items, dim, dtype, source, chash, shards) -> dict:
  return {"format": FORMAT, "num_items": int(num_items), "dim": int(dim), "dtype": dtype,
          "source": source, "config_hash": chash,
          "shards": [{"file": f"{s.name}.npy", "lo": s.lo, "hi": s.hi} for s in shards]}


def _shard_done(directory: str, spec: ShardSpec, record: dict) -> bool:
  """The shard's .json matches `record` and its .npy has the right header (cheap: no data read)."""
  jpath = os.path.join(directory, f"{spec.name}.json")
  npath = os.path.join(directory, f"{spec.name}.npy")
  if not (files.exists(jpath) and files.exists(npath)):
    return False
  try:
    have = json.loads(files.read_text(jpath))
    shape, dtype = files.npy_header(npath)
  except (OSError, ValueError, EOFError, UserError):
    return False
  want_dtype = np.uint16 if record["dtype"] == "bfloat16" else np.float32
  return have == record and shape == (spec.hi - spec.lo, record["dim"]) and dtype == want_dtype


def build_shards(directory: str, num_items: int, dim: int,
                 embed_range: Callable[[int, int], np.ndarray], *, source: str, config: str,
                 num_shards: int | None = None, dtype: str = "float32",
                 shard_titles_hash: Callable[[int, int], str] | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 log=print) -> list[int]:
  """Embeds and writes this process's missing shards; returns the indices it built.

  embed_range(lo, hi) -> [hi - lo, dim] float32 embeddings of items [lo, hi). `config` is
  the config hash (what the embeddings mean); a directory built under another config, size,
  dim or dtype is refused rather than mixed. shard_titles_hash(lo, hi): recorded per shard, so
  a shard of changed titles is rebuilt.
  """
  if dtype not in DTYPES:
    raise UserError(f"catalog shard dtype must be one of {DTYPES}, got {dtype!r}")
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  path = os.path.join(directory, MANIFEST)
  if files.exists(path):
    m = read_manifest(directory)
    for key, want in (("num_items", num_items), ("dim", dim), ("dtype", dtype),
                      ("config_hash", config)):
      if m[key] != want:
        raise UserError(f"{path}: built with {key}={m[key]!r}, this run has {want!r}; "
                        "use another directory (or delete this one) to rebuild")
    if num_shards is not None and num_shards != len(m["shards"]):
      raise UserError(f"{path}: has {len(m['shards'])} shards, --num_shards={num_shards}")
    shards = [ShardSpec(i, s["lo"], s["hi"]) for i, s in enumerate(m["shards"])]
  else:
    shards = shard_ranges(num_items, num_shards or default_num_shards(num_items, pc))
    # Every process writes the same bytes atomically: whichever rename lands last, it is whole.
    files.write_json(path, _manifest(num_items, dim, dtype, source, config, shards))
  built = []
  for spec in shards_of_process(shards, pi, pc):
    record = {"lo": spec.lo, "hi": spec.hi, "dim": int(dim), "dtype": dtype, "source": source,
              "config_hash": config,
              "titles_hash": shard_titles_hash(spec.lo, spec.hi) if shard_titles_hash else None}
    if _shard_done(directory, spec, record):
      continue
    emb = np.asarray(embed_range(spec.lo, spec.hi), dtype=np.float32)
    if emb.shape != (spec.hi - spec.lo, dim):
      raise ValueError(f"embed_range({spec.lo}, {spec.hi}) returned {emb.shape}")
    if not np.isfinite(emb).all():
      raise UserError(f"{spec.name}: non-finite embedding in items [{spec.lo}, {spec.hi})")
    stored = emb.astype(_bf16()).view(np.uint16) if dtype == "bfloat16" else emb
    files.write_npy(os.path.join(directory, f"{spec.name}.npy"), stored)
    files.write_json(os.path.join(directory, f"{spec.name}.json"), record)
    built.append(spec.index)
    log(f"[catalog] {spec.name}: items [{spec.lo}, {spec.hi}) written to {directory}")
  return built


def embed_catalog_shards(model, titles: Sequence[str], directory: str, *,
                         num_shards: int | None = None, dtype: str = "float32", mesh=None,
                         process_index: int | None = None, process_count: int | None = None,
                         log=print, **embed_kw) -> list[int]:
  """The catalog's base-model embeddings (embed.embed_texts, length-bucketed per shard) as shards.

  Each process embeds only its own shards' titles (data parallel over `mesh`, which should be
  a process-local mesh, e.g. parallel.make_mesh(devices=jax.local_devices())).
  """
  from bigrec_jax.ground import embed

  chash = config_hash(model=embed.model_fingerprint(model), version=embed.EMBEDDING_VERSION,
                      embed={k: embed_kw.get(k) for k in ("batch_size", "smallest_bucket",
                                                           "max_tokens")})
  run = lambda lo, hi: embed.embed_texts(model, titles[lo:hi], mesh=mesh,
                                         desc=f"embedding items {lo}-{hi}", **embed_kw)
  return build_shards(directory, len(titles), model.config.hidden_size, run,
                      source=files.abspath(model.source), config=chash,
                      num_shards=num_shards, dtype=dtype,
                      shard_titles_hash=lambda lo, hi: titles_hash(titles[lo:hi]),
                      process_index=process_index, process_count=process_count, log=log)


# ----------------------------------------------------------------------------- reading

class ShardedCatalog:
  """The shards of a finished catalog directory, read by item range (files.npy_rows: mmaps
  locally, ranged reads on an object store)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.manifest = m = read_manifest(directory)
    self.num_items, self.dim, self.dtype = m["num_items"], m["dim"], m["dtype"]
    self.shards = [ShardSpec(i, s["lo"], s["hi"]) for i, s in enumerate(m["shards"])]
    self.files_read: list[str] = []  # shard files this object opened (for tests and logs)
    self.rows_read = 0
    for spec in self.shards:
      rec = os.path.join(directory, f"{spec.name}.json")
      if not files.exists(rec):
        raise UserError(f"{directory}: {spec.name} (items [{spec.lo}, {spec.hi})) is not built "
                        "yet; run the catalog embedding again (it resumes)")

  def _rows(self, spec: ShardSpec, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of the shard (shard-relative), read on their own: bounded memory."""
    path = os.path.join(self.directory, f"{spec.name}.npy")
    if path not in self.files_read:
      self.files_read.append(path)
    return files.npy_rows(path, lo, hi)

  def read_rows(self, lo: int, hi: int, out: np.ndarray, transform=None,
                chunk_rows: int | None = None) -> None:
    """Copies float32 rows [lo, hi) into out[:hi - lo] (or calls transform(rows, out_rows)), one
    mapped chunk at a time."""
    hi = min(hi, self.num_items)
    chunk_rows = chunk_rows or chunk_rows_for(self.dim)
    for spec in self.shards:
      a, b = max(lo, spec.lo), min(hi, spec.hi)
      for c in range(a, b, chunk_rows):
        d = min(b, c + chunk_rows)
        part = self._rows(spec, c - spec.lo, d - spec.lo)
        part = part.view(_bf16()).astype(np.float32) if self.dtype == "bfloat16" else part
        if transform is None:
          out[c - lo:d - lo] = part
        else:
          transform(part, out[c - lo:d - lo])
        self.rows_read += d - c

  def read_all(self) -> np.ndarray:
    """The whole [N, dim] float32 table (a single-host convenience for small catalogs/tests)."""
    out = np.empty((self.num_items, self.dim), np.float32)
    self.read_rows(0, self.num_items, out)
    return out


def _scoring_rows(part: np.ndarray, out: np.ndarray) -> None:
  """out = [2 e, -||e||^2], the squared norm summed in float64 as kernel.place_items does."""
  dim = part.shape[1]
  np.multiply(part, 2.0, out=out[:, :dim])
  out[:, dim] = -np.einsum("nd,nd->n", part, part, dtype=np.float64)


def _item_sharding(mesh: Mesh, ndim_before: int = 0, ndim_after: int = 0):
  axes = kernel.item_axes_of(mesh)
  spec = kernel._spec(axes)
  return NamedSharding(mesh, P(*([None] * ndim_before), spec, *([None] * ndim_after))), axes


def _from_blocks(shape, sharding: NamedSharding, make_block) -> jax.Array:
  """A global array built one host block at a time (each freed once placed on its devices).

  Devices holding the same index (replicas over axes the array is not sharded on, e.g. data
  when the items span fsdp x tensor) share one host block: each block is read once."""
  groups: dict[tuple, tuple] = {}
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    key = tuple((s.start, s.stop) for s in index)
    groups.setdefault(key, (index, []))[1].append(device)
  arrays = []
  for index, devices in groups.values():
    block = make_block(index)
    arrays.extend(jax.device_put(block, d) for d in devices)
    del block
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _padded_items(num_items: int, mesh: Mesh | None) -> int:
  shards = kernel._num_shards(mesh, kernel.item_axes_of(mesh)) if mesh is not None else 1
  return -(-num_items // shards) * shards


def place_item_vector(values, num_items: int, mesh: Mesh | None) -> jax.Array:
  """A per-item [N] float32 signal (popularity) sharded like the item table; padding rows 0.

  `values`: None (zeros), anything sliceable by item range (a np.load(mmap_mode="r") array),
  or a callable (lo, hi) -> [hi - lo]."""
  n_pad = _padded_items(num_items, mesh)

  def block(lo, hi):
    out = np.zeros((hi - lo,), np.float32)
    top = min(hi, num_items)
    if values is not None and top > lo:
      out[:top - lo] = values(lo, top) if callable(values) else np.asarray(values[lo:top])
    return out

  if mesh is None:
    return jax.numpy.asarray(block(0, n_pad))
  sharding, _ = _item_sharding(mesh)
  return _from_blocks((n_pad,), sharding, lambda idx: block(*_bounds(idx[0], n_pad)))


def place_cf(cf, num_queries: int, items: kernel.ItemTable) -> jax.Array:
  """CF scores [Q, N] placed with the item axis sharded like `items` (kernel.ground's `cf`).

  `cf`: a [Q, N] sliceable (a np.load(mmap_mode="r") array) or a callable (lo, hi) -> [Q, hi-lo];
  each process reads only its devices' item columns."""
  n, n_pad = items.num_items, items.padded_items

  def block(lo, hi):
    out = np.zeros((num_queries, hi - lo), np.float32)
    top = min(hi, n)
    if top > lo:
      out[:, :top - lo] = cf(lo, top) if callable(cf) else np.asarray(cf[:, lo:top])
    return out

  if items.mesh is None:
    return jax.numpy.asarray(block(0, n_pad))
  sharding, _ = _item_sharding(items.mesh, ndim_before=1)
  return _from_blocks((num_queries, n_pad), sharding,
                      lambda idx: block(*_bounds(idx[1], n_pad)))


def _bounds(s: slice, n: int) -> tuple[int, int]:
  lo, hi, _ = s.indices(n)
  return lo, hi


def place_catalog(catalog: ShardedCatalog | str, mesh: Mesh | None = None, popularity=None, *,
                  chunk_rows: int | None = None) -> kernel.ItemTable:
  """The kernel's ItemTable assembled from the shards, each process reading only its rows.

  Equal to kernel.place_items(all embeddings, popularity, mesh) (same padding, same float64
  norms), without any host holding more than its share plus one device block.
  """
  if isinstance(catalog, str):
    catalog = ShardedCatalog(catalog)
  n, dim = catalog.num_items, catalog.dim
  n_pad = _padded_items(n, mesh)

  def block(lo, hi):
    out = np.zeros((hi - lo, dim + 1), np.float32)
    catalog.read_rows(lo, hi, out, _scoring_rows, chunk_rows)
    return out

  if mesh is None:
    table = jax.numpy.asarray(block(0, n_pad))
    axes = ()
  else:
    sharding, axes = _item_sharding(mesh, ndim_after=1)
    table = _from_blocks((n_pad, dim + 1), sharding, lambda idx: block(*_bounds(idx[0], n_pad)))
  pop = place_item_vector(popularity, n, mesh)
  return kernel.ItemTable(table, pop, n, mesh, axes)
