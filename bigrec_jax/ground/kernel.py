"""The grounding kernel: L2 distance to every catalog item, popularity/CF reweighting, top-K, ranks.

One jitted function serves plain BIGRec grounding, popularity and collaborative injection and the
gamma search. The item table is sharded along its item axis over the mesh (logical axis "items");
inside `jax.shard_map` every shard computes distances for one batch of queries at a time, the
exact per-row min/max is combined with pmin/pmax, each shard keeps its local top-K and the shards'
candidates are merged, and target ranks are counted per shard and summed. No [queries x items]
block bigger than [query_batch x items_per_shard] exists at any time; by default the batch comes
from a memory budget (`auto_query_batch`). Queries may be numpy or already on the device; row
padding to whole batches happens on the device, inside the jitted function.

Query rows split over the mesh axes the item table does not span (`query_axes_of`): with the
default rules ("items" -> data, fsdp, tensor) that is none, every device sees every query and
holds 1/devices of the catalog; with `mesh.rules.items = "fsdp,tensor"` the table is sharded over
fsdp x tensor and replicated over `data`, and each data index grounds its own contiguous slice of
the rows (padded to whole batches of `query_batch` rows per slice), so data-parallel replicas of
a sharded catalog split the query batches. The top-K merge and the rank sums run over the item
axes only; results are replicated afterwards, identical to a single-process run with the same
batch size (only the matmul tiling of the float distances can differ by an ulp, as below).

Ranking key (lower is better), REFERENCE.md "Step 2":
  s  = [q, 1] . [2e, -||e||^2] = 2 q.e - ||e||^2       (one matmul against the placed table)
  D  = sqrt(max(||q||^2 - s, 0))                       (the L2 distance, cdist's clamp)
  D' = (D - min_row D) / (max_row D - min_row D)       (exact over the whole catalog)
  key = D' * (1 + p)^(-gamma_pop) * (1 + c)^(-gamma_cf) if a gamma is non-zero, else key = -s.
With both gammas 0 the order is that of s, i.e. of D itself (ascending distance), so it is the
plain reference order (cdist + argsort) rather than that of D', whose float rounding can merge
near-equal distances. When both gammas are 0 (known before tracing) the kernel runs a plain
mode: top-K and the target count read the matmul's output directly and the square root is
taken for the K winners only; no min-max, no reweighting, no extra pass over the block.
Ties: equal keys are ordered by lower item id (a stable argsort), both in the top-K (lax.top_k
keeps the lower index first, and shard candidates are concatenated in id order) and in the rank
count: rank(t) = #{j: key_j < key_t} + #{j: key_j == key_t, j < t}. The reference's
`argsort().argsort()` uses torch's default (unstable) sort, so only exact ties can differ.
The target's key is read out of the same key array by index (not recomputed), so counting is
exact. (1+x)^(-gamma) is computed as exp(-gamma * log(1 + x)) in one place for both the single
kernel and the gamma grid, and s, D, D' are materialised once per batch, so with the same
`query_batch` the grid's ranks equal the single kernel's bit for bit (a different query batch
may change the matmul's tiling and so the last bit of near-tied distances).
Float32 distances can order two items whose distances differ by about one ulp differently from
torch's float32 cdist; exact ties and everything else are ordered identically.

Several beams per row (an extension; evaluate --beams=N): queries [Q, N, D] and weights
[Q, N] (signals.beam_rank_weights: w_r proportional to 1/(r+1) over the row's non-empty beams,
summing to 1; missing beams weigh 0 and add exactly 0). The combined distance is
  C = sum_r w_r * minmax_row(D_r)                      (summed in beam order)
and C takes D's place above: both gammas 0 rank by C, otherwise key = minmax_row(C) * reweighting
(so the nearest item still has key 0 and injection never moves the top-1). N = 1 is the
single-beam path exactly (a [Q, 1, D] query is squeezed to [Q, D]).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bigrec_jax import parallel


@dataclasses.dataclass(frozen=True)
class ItemTable:
  """The catalog placed on the devices once: scoring rows [N_pad, D + 1] and popularity [N_pad].

  Row i of `scoring` is [2 e_i, -||e_i||^2] (the squared norm summed in float64 on the host), so
  one matmul with [q, 1] gives s = 2 q.e - ||e||^2 = ||q||^2 - ||q - e||^2 with no further pass
  over the [queries x items] block. Rows past `num_items` are padding (so the table divides over
  the shards) and never ranked.
  """
  scoring: jax.Array
  popularity: jax.Array
  num_items: int
  mesh: Mesh | None
  item_axes: tuple[str, ...]

  @property
  def num_shards(self) -> int:
    return _num_shards(self.mesh, self.item_axes)

  @property
  def padded_items(self) -> int:
    return int(self.scoring.shape[0])

  @property
  def dim(self) -> int:
    return int(self.scoring.shape[1]) - 1

  @property
  def query_axes(self) -> tuple[str, ...]:
    return query_axes_of(self.mesh, self.item_axes)

  @property
  def query_shards(self) -> int:
    return _num_shards(self.mesh, self.query_axes)


class Grounded(NamedTuple):
  top_ids: np.ndarray | None  # [Q, K] int32, best first
  top_scores: np.ndarray | None  # [Q, K] float32 ranking key (lower is better)
  target_ranks: np.ndarray | None  # [Q] int32, 0-based best rank over a row's target ids


def item_axes_of(mesh: Mesh | None) -> tuple[str, ...]:
  """The mesh axes the logical "items" axis is sharded over (empty: not sharded)."""
  if mesh is None:
    return ()
  spec = parallel.logical_to_spec(("items",), mesh)[0]
  if spec is None:
    return ()
  return (spec,) if isinstance(spec, str) else tuple(spec)


def query_axes_of(mesh: Mesh | None, item_axes: tuple[str, ...]) -> tuple[str, ...]:
  """The mesh axes query rows split over: those of size > 1 the item table does not span (the
  table is replicated over them), e.g. `data` when config mesh.rules.items = "fsdp,tensor"."""
  if mesh is None:
    return ()
  return tuple(a for a in mesh.axis_names if a not in item_axes and mesh.shape[a] > 1)


def _num_shards(mesh: Mesh | None, axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in axes) if axes else 1


def place_items(embeddings, popularity, mesh: Mesh | None = None) -> ItemTable:
  """Pads the catalog to a multiple of the shard count and shards it along the item axis.

  `popularity` is the normalised vector p in [0, 1] (see signals.popularity_weights).
  """
  embeddings = np.asarray(embeddings, dtype=np.float32)
  popularity = np.asarray(popularity, dtype=np.float32)
  if embeddings.ndim != 2 or popularity.shape != (embeddings.shape[0],):
    raise ValueError(f"item table {embeddings.shape} and popularity {popularity.shape} disagree")
  axes = item_axes_of(mesh)
  shards = _num_shards(mesh, axes)
  n = embeddings.shape[0]
  n_pad = -(-n // shards) * shards
  dim = embeddings.shape[1]
  emb = np.zeros((n_pad, dim + 1), np.float32)
  for lo in range(0, n, 65536):  # float64 norms in chunks: no float64 copy of a big table
    part = embeddings[lo:lo + 65536]
    emb[lo:lo + len(part), :dim] = 2.0 * part
    emb[lo:lo + len(part), dim] = -np.einsum("nd,nd->n", part.astype(np.float64),
                                             part.astype(np.float64))
  pop = np.zeros((n_pad,), np.float32)
  pop[:n] = popularity
  if mesh is not None:
    emb_dev = jax.device_put(emb, NamedSharding(mesh, P(_spec(axes), None)))
    pop_dev = jax.device_put(pop, NamedSharding(mesh, P(_spec(axes))))
  else:
    emb_dev, pop_dev = jnp.asarray(emb), jnp.asarray(pop)
  return ItemTable(emb_dev, pop_dev, n, mesh, axes)


def _spec(axes: tuple[str, ...]):
  return None if not axes else axes[0] if len(axes) == 1 else axes


# ----------------------------------------------------------------------------- per-shard math

def _similarity(q1, table):
  """[B, Nl] s = 2 q.e - ||e||^2 by one matmul of [q, 1] with the scoring rows (full f32
  precision: TF32/bf16 would reorder items). Larger s = nearer: ||q - e||^2 = ||q||^2 - s."""
  return jnp.dot(q1, table.T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _distances_from(s, q_sq):
  """L2 distances D = sqrt(max(||q||^2 - s, 0)) (torch.cdist's formula, clamped the same way)."""
  return jnp.sqrt(jnp.maximum(q_sq - s, 0.0))


def _distances(q1, table):
  """[B, Nl] L2 distances of the queries [B, D + 1] (last column 1) to the shard's items."""
  q = q1[..., :-1]
  return _distances_from(_similarity(q1, table), jnp.sum(q * q, axis=-1, keepdims=True))


def _row_minmax(d, item_ok, axes):
  """Min-max normalisation along the last axis with the exact min/max over all shards."""
  lo = jnp.min(jnp.where(item_ok, d, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(jnp.where(item_ok, d, -jnp.inf), axis=-1, keepdims=True)
  if axes:
    lo, hi = lax.pmin(lo, axes), lax.pmax(hi, axes)
  span = hi - lo
  return (d - lo) / jnp.where(span > 0, span, 1.0)


def _beam_distances(q, w, table, item_ok, axes):
  """Several beams per row: sum_b w_b * minmax(D_b), summed in beam order ([B, Nb, D] -> [B, Nl]).

  Beams with weight 0 (missing predictions) add exactly 0, whatever their embedding holds.
  """
  rows, beams, dim = q.shape
  d = _distances(q.reshape(rows * beams, dim), table).reshape(rows, beams, -1)
  dn = _row_minmax(d, item_ok, axes)
  out = jnp.zeros((rows, d.shape[-1]), jnp.float32)
  for b in range(beams):
    wb = w[:, b:b + 1]
    out = out + jnp.where(wb > 0, wb * dn[:, b], 0.0)
  return out


def _keys(plain_key, dn, log_pop, log_cf, gamma_pop, gamma_cf, item_ok):
  """The ranking key for one (gamma_pop, gamma_cf); padding items get +inf.

  Both gammas 0: `plain_key` (-s for one beam: the plain order; the combined distance for
  several beams), else D' * (1 + p)^(-gamma_pop) * (1 + c)^(-gamma_cf)."""
  key = dn * jnp.exp(-gamma_pop * log_pop)[None, :]
  if log_cf is not None:
    key = key * jnp.exp(-gamma_cf * log_cf)
  plain = (gamma_pop == 0) & (gamma_cf == 0)
  key = jnp.where(plain, plain_key, key)
  return jnp.where(item_ok, key, jnp.inf)


def _target_ranks(key, first_id, gid, targets, axes, num_items, *, higher_first=False):
  """Best 0-based rank over each row's target ids ([B, M], -1 = padding); num_items if none.

  The target's own key is read by index on the shard that holds it (others see +-inf, combined by
  pmin/pmax), then one pass over the keys counts the items ordered before it. `higher_first`:
  `key` holds negated keys (the plain mode's top-K operand), so "before" means larger.
  """
  n_local = key.shape[1]
  local = targets - first_id
  here = (targets >= 0) & (local >= 0) & (local < n_local)
  kt = jnp.take_along_axis(key, jnp.clip(local, 0, n_local - 1), axis=1)
  far = -jnp.inf if higher_first else jnp.inf
  kt = jnp.where(here, kt, far)
  if axes:
    kt = lax.pmax(kt, axes) if higher_first else lax.pmin(kt, axes)
  k3, kt3 = key[:, None, :], kt[:, :, None]
  ahead = (k3 > kt3) if higher_first else (k3 < kt3)
  before = ahead | ((k3 == kt3) & (gid[None, None, :] < targets[:, :, None]))
  count = jnp.sum(before, axis=-1, dtype=jnp.int32)  # [B, M]
  if axes:
    count = lax.psum(count, axes)
  return jnp.min(jnp.where(targets >= 0, count, num_items), axis=1)



@dataclasses.dataclass(frozen=True)
class _Config:
  mesh: Mesh | None
  axes: tuple[str, ...]
  num_items: int
  rows: int  # real query rows (the rest of the last batch is padding)
  batch: int
  k: int  # 0: no top-K
  grid: bool  # rank targets for every gamma pair instead of one
  gamma_batch: int
  plain: bool  # both gammas statically 0 (and one beam): order by s alone (see _shard_body)
  beams: int  # predictions per row combined into one distance (1: the plain [Q, D] queries)
  query_axes: tuple[str, ...] = ()  # mesh axes the rows split over (query_axes_of)


def _shard_body(cfg: _Config, n_local: int, q, e, pop, cf, targets, gammas, weights):
  """One shard: q [Ql, D+1] / [Ql, Nb, D+1] (all rows, or this data index's slice of them when
  the rows split over query axes), e [Nl, D+1], pop [Nl], cf [Ql, Nl].

  Plain mode ranks by s = 2 q.e - ||e||^2 straight from the matmul (descending s = ascending
  distance) and takes the square root of the K winners only. The other modes compute D from
  the same s, and the grid's (0, 0) point also ranks by s, so it equals plain mode bit for bit.
  """
  axes = cfg.axes
  first_id = (lax.axis_index(axes) if axes else 0) * n_local
  gid = first_id + jnp.arange(n_local, dtype=jnp.int32)
  padded = n_local * _num_shards(cfg.mesh, axes) > cfg.num_items
  item_ok = (gid < cfg.num_items)[None, :]
  log_pop = jnp.log(1.0 + pop)
  nb = q.shape[0] // cfg.batch
  split = lambda x: None if x is None else x.reshape((nb, cfg.batch) + x.shape[1:])

  def one_batch(xs):
    qb, cb, tb, wb = xs
    out = {}
    if cfg.plain:
      # The matmul's output is the top-K operand and the count's: no pass over it before.
      s = _similarity(qb, e)
      if padded:
        s = jnp.where(item_ok, s, -jnp.inf)
      if cfg.k:
        out["vals"], idx = lax.top_k(s, min(cfg.k, n_local))
        out["ids"] = gid[idx]
      if tb is not None:
        out["ranks"] = _target_ranks(s, first_id, gid, tb, axes, cfg.num_items,
                                     higher_first=True)
      return out
    # Materialised once per batch: otherwise XLA may fuse (and FMA-contract) the distance into
    # each consumer differently, and the grid's keys would drift from the single kernel's by ulps.
    if cfg.beams == 1:
      s = lax.optimization_barrier(_similarity(qb, e))
      q = qb[:, :-1]
      d = lax.optimization_barrier(_distances_from(s, jnp.sum(q * q, axis=-1, keepdims=True)))
      plain_key = -s
    else:
      d = lax.optimization_barrier(_beam_distances(qb, wb, e, item_ok[:, None], axes))
      plain_key = d
    dn = lax.optimization_barrier(_row_minmax(d, item_ok, axes))
    log_cf = None if cb is None else jnp.log(1.0 + cb)
    if cfg.grid:
      def one_gamma(g):
        key = _keys(plain_key, dn, log_pop, log_cf, g[0], g[1], item_ok)
        return _target_ranks(key, first_id, gid, tb, axes, cfg.num_items)
      return {"ranks": lax.map(one_gamma, gammas, batch_size=cfg.gamma_batch)}  # [G, B]
    key = _keys(plain_key, dn, log_pop, log_cf, gammas[0, 0], gammas[0, 1], item_ok)
    if cfg.k:
      vals, idx = lax.top_k(-key, min(cfg.k, n_local))
      out["vals"], out["ids"] = vals, gid[idx]
    if tb is not None:
      out["ranks"] = _target_ranks(key, first_id, gid, tb, axes, cfg.num_items)
    return out

  if nb == 1:  # one batch: no loop (and no stacked copies of its outputs)
    out = jax.tree.map(lambda x: x[None], one_batch((q, cf, targets, weights)))
  else:
    out = lax.map(one_batch, (split(q), split(cf), split(targets), split(weights)))
  if "vals" in out:  # best first: s (plain mode) or the negated key
    out["vals"] = out["vals"].reshape(nb * cfg.batch, -1)
    out["ids"] = out["ids"].reshape(nb * cfg.batch, -1)
  if "ranks" in out:
    r = out["ranks"]
    out["ranks"] = (jnp.moveaxis(r, 1, 0).reshape(r.shape[1], -1) if cfg.grid
                    else r.reshape(-1))
  return out


def _pad_rows(x, rows: int):
  if x is None or x.shape[0] == rows:
    return x
  fill = -1 if jnp.issubdtype(x.dtype, jnp.integer) else 0
  return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1), constant_values=fill)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run(q, e, pop, cf, targets, gammas, weights, *, cfg: _Config):
  """Pads the rows to whole batches on the device, runs the shards, merges, trims the padding."""
  shards = _num_shards(cfg.mesh, cfg.axes)
  n_local = e.shape[0] // shards
  step = cfg.batch * _num_shards(cfg.mesh, cfg.query_axes)  # whole batches on every row slice
  qp = -(-cfg.rows // step) * step
  q = q.astype(jnp.float32)
  q = jnp.concatenate([q, jnp.ones(q.shape[:-1] + (1,), jnp.float32)], axis=-1)  # [q, 1]
  q, cf, targets, weights = (_pad_rows(x, qp) for x in (q, cf, targets, weights))
  body = functools.partial(_shard_body, cfg, n_local)
  if cfg.axes or cfg.query_axes:
    items, rows = _spec(cfg.axes), _spec(cfg.query_axes)
    out_specs = {}
    if cfg.k and not cfg.grid:
      out_specs.update(vals=P(rows, items), ids=P(rows, items))
    if targets is not None:
      out_specs["ranks"] = P(None, rows) if cfg.grid else P(rows)
    in_specs = (P(rows), P(items, None), P(items), None if cf is None else P(rows, items),
                None if targets is None else P(rows), P(), None if weights is None else P(rows))
    body = jax.shard_map(body, mesh=cfg.mesh, in_specs=in_specs, out_specs=out_specs)
  out = body(q, e, pop, cf, targets, gammas, weights)
  if "vals" in out:
    vals, ids = out.pop("vals"), out.pop("ids")
    if shards > 1:  # merge the shards' candidates (concatenated in item-id order)
      vals, pos = lax.top_k(vals, cfg.k)
      ids = jnp.take_along_axis(ids, pos, axis=1)
    vals, ids = vals[:cfg.rows], ids[:cfg.rows]
    if cfg.plain:  # the K winners' distances from their s
      q_sq = jnp.sum(jnp.square(q[:cfg.rows, :-1]), axis=-1, keepdims=True)
      out["vals"] = _distances_from(vals, q_sq)
    else:
      out["vals"] = -vals
    out["ids"] = ids
  if "ranks" in out:
    out["ranks"] = out["ranks"][..., :cfg.rows]
  if cfg.mesh is not None:  # small outputs, replicated: every process (multi-host) can read them
    out = lax.with_sharding_constraint(out, NamedSharding(cfg.mesh, P()))
  return out


# ----------------------------------------------------------------------------- public API

# Elements of one [query batch x items per shard] distance block when the batch is not given.
# On CPU a block that stays in cache (2^22 float32 = 16 MiB) beats one big matmul; accelerators
# get 2^26 (256 MiB). At least MIN_QUERY_BATCH rows, so a huge catalog is not re-read per few rows.
QUERY_BLOCK_ELEMENTS = {"cpu": 1 << 22, "default": 1 << 26}
MIN_QUERY_BATCH = 256


def auto_query_batch(rows: int, items_per_shard: int, beams: int = 1,
                     budget: int | None = None) -> int:
  """Rows per batch from a memory budget, evened out so the last batch is barely padded."""
  if budget is None:
    budget = QUERY_BLOCK_ELEMENTS.get(jax.default_backend(), QUERY_BLOCK_ELEMENTS["default"])
  rows = max(rows, 1)
  most = max(MIN_QUERY_BATCH, budget // max(1, items_per_shard * beams))
  batches = -(-rows // most)
  return -(-rows // batches)


def _place(x, mesh: Mesh | None, spec):
  if mesh is None:
    return x if isinstance(x, jax.Array) else jnp.asarray(x)
  return jax.device_put(x, NamedSharding(mesh, spec))


def _prepare_rows(items: ItemTable, queries, cf, targets, beam_weights, batch: int | None):
  """Checks the rows and places them (replicated) and cf (item-sharded); no row padding here.

  `queries` may already live on the device (a jax.Array, any sharding, e.g. rows over `data`
  from parallel.global_batch_from_local); it is then used as it is. With query axes the jitted
  function slices each data index's rows out of the replicated arrays (no transfer).
  """
  if not isinstance(queries, jax.Array):
    queries = np.asarray(queries, dtype=np.float32)
  if queries.ndim == 3 and queries.shape[1] == 1:
    queries = queries[:, 0]
    beam_weights = None
  if queries.ndim not in (2, 3):
    raise ValueError(f"queries must be [Q, D] or [Q, beams, D], got {queries.shape}")
  q_rows, dim = queries.shape[0], queries.shape[-1]
  beams = queries.shape[1] if queries.ndim == 3 else 1
  if dim != items.dim:
    raise ValueError(f"queries have dimension {dim}, items {items.dim}")
  w = None
  if beams > 1:
    if beam_weights is None:
      raise ValueError("queries with several beams need beam_weights [Q, beams]")
    w = np.asarray(beam_weights, dtype=np.float32)
    if w.shape != (q_rows, beams):
      raise ValueError(f"beam_weights have shape {w.shape}, expected {(q_rows, beams)}")
  per_slice = -(-q_rows // items.query_shards)  # rows per data index (all: no query axes)
  if batch is None:
    batch = auto_query_batch(per_slice, items.padded_items // items.num_shards, beams)
  batch = max(1, min(batch, per_slice))
  cf_pad = None
  if isinstance(cf, jax.Array):  # already placed, item-sharded (catalog_shards.place_cf)
    if cf.shape != (q_rows, items.padded_items):
      raise ValueError(f"placed cf scores have shape {cf.shape}, expected "
                       f"{(q_rows, items.padded_items)} (padded like the item table)")
    cf_pad, cf = cf, None
  if cf is not None:
    cf = np.asarray(cf, dtype=np.float32)
    if cf.shape != (q_rows, items.num_items):
      raise ValueError(f"cf scores have shape {cf.shape}, expected {(q_rows, items.num_items)}")
    cf_pad = cf
    if items.padded_items != items.num_items:
      cf_pad = np.zeros((q_rows, items.padded_items), np.float32)
      cf_pad[:, :items.num_items] = cf
  t = None
  if targets is not None:
    t = np.asarray(targets, dtype=np.int32)
    if t.ndim == 1:
      t = t[:, None]
    if t.shape[0] != q_rows:
      raise ValueError(f"{t.shape[0]} target rows for {q_rows} queries")
    if ((t < -1) | (t >= items.num_items)).any():
      raise ValueError("target ids must be in [0, num_items) or -1 (padding)")
  mesh = items.mesh
  queries = _place(queries, mesh, P())
  if cf_pad is not None and not isinstance(cf_pad, jax.Array):
    cf_pad = _place(cf_pad, mesh, P(None, _spec(items.item_axes)))
  t = None if t is None else _place(t, mesh, P())
  w = None if w is None else _place(w, mesh, P())
  return queries, cf_pad, t, w, q_rows, batch, beams


def ground(queries, items: ItemTable, *, k: int = 50, targets=None, cf=None,
           gamma_pop: float = 0.0, gamma_cf: float = 0.0, query_batch: int | None = None,
           beam_weights=None) -> Grounded:
  """Top-K catalog items (and optionally the best rank of each row's targets) for each query.

  queries [Q, D] (numpy or already on the device), or [Q, beams, D] with beam_weights [Q, beams]
  (see the module docstring); targets [Q] or [Q, M] item ids padded with -1 (ids sharing a title
  count as one target: the best of their ranks); cf [Q, N] per-row min-max normalised CF scores
  (higher = better), numpy, or already placed item-sharded and padded (catalog_shards.place_cf).
  k=0 skips the top-K. query_batch None: from QUERY_BLOCK_ELEMENTS. On a mesh whose item table
  leaves the data axis out (query_axes_of), each data index grounds its slice of the rows in
  batches of query_batch rows.
  Returns numpy arrays of Q rows.
  """
  if not 0 <= k <= items.num_items:
    raise ValueError(f"k={k} must be in [0, {items.num_items}]")
  if gamma_cf != 0 and cf is None:
    raise ValueError("gamma_cf is non-zero but no CF scores were given")
  q, cf_pad, t, w, rows, batch, beams = _prepare_rows(items, queries, cf, targets, beam_weights,
                                                      query_batch)
  plain = gamma_pop == 0 and gamma_cf == 0 and beams == 1
  cfg = _Config(items.mesh, items.item_axes, items.num_items, rows, batch, k, False, 1,
                plain, beams, items.query_axes)
  gammas = jnp.asarray([[gamma_pop, gamma_cf]], jnp.float32)
  out = jax.device_get(_run(q, items.scoring, items.popularity, None if plain else cf_pad, t,
                            gammas, w, cfg=cfg))
  return Grounded(
      top_ids=out["ids"] if k else None,
      top_scores=out["vals"] if k else None,
      target_ranks=out["ranks"] if t is not None else None)


def target_ranks_grid(queries, items: ItemTable, targets, gammas, *, cf=None,
                      query_batch: int | None = None, gamma_batch: int = 4,
                      beam_weights=None) -> np.ndarray:
  """[G, Q] best target ranks for every (gamma_pop, gamma_cf) pair in gammas [G, 2].

  Distances and their min-max are computed once per query batch and reused by all gammas, so a
  whole grid costs little more than counting; ranks equal `ground(...).target_ranks` per gamma.
  """
  gammas = np.asarray(gammas, dtype=np.float32)
  if gammas.ndim != 2 or gammas.shape[1] != 2 or len(gammas) == 0:
    raise ValueError(f"gammas must be [G, 2] (pop, cf) pairs, got {gammas.shape}")
  if cf is None and (gammas[:, 1] != 0).any():
    raise ValueError("the grid has non-zero gamma_cf but no CF scores were given")
  q, cf_pad, t, w, rows, batch, beams = _prepare_rows(items, queries, cf, targets, beam_weights,
                                                      query_batch)
  cfg = _Config(items.mesh, items.item_axes, items.num_items, rows, batch, 0, True,
                max(1, min(gamma_batch, len(gammas))), False, beams, items.query_axes)
  out = _run(q, items.scoring, items.popularity, cf_pad, t, jnp.asarray(gammas), w, cfg=cfg)
  return np.asarray(jax.device_get(out["ranks"]))
