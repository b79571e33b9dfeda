"""The grounding kernel: L2 distance to every catalog item, popularity/CF reweighting, top-K, ranks.

One jitted function serves plain BIGRec grounding, popularity and collaborative injection and the
gamma search. The item table is sharded along its item axis over the mesh (logical axis "items");
inside `jax.shard_map` every shard computes distances for one batch of queries at a time, the
exact per-row min/max is combined with pmin/pmax, each shard keeps its local top-K and the shards'
candidates are merged, and target ranks are counted per shard and summed. No [queries x items]
block bigger than [query_batch x items_per_shard] exists at any time.

Ranking key (lower is better), SPEC.md "Step 2":
  D  = sqrt(max(||q||^2 - 2 q.e + ||e||^2, 0))        (torch.cdist's own matmul formula)
  D' = (D - min_row D) / (max_row D - min_row D)       (exact over the whole catalog)
  key = D' * (1 + p)^(-gamma_pop) * (1 + c)^(-gamma_cf) if a gamma is non-zero, else key = D.
With both gammas 0 the key is D itself, so the order is exactly the plain reference order
(cdist + argsort) rather than that of D', whose float rounding can merge near-equal distances.
Ties: equal keys are ordered by lower item id (a stable argsort), both in the top-K (lax.top_k
keeps the lower index first, and shard candidates are concatenated in id order) and in the rank
count: rank(t) = #{j: key_j < key_t} + #{j: key_j == key_t, j < t}. The reference's
`argsort().argsort()` uses torch's default (unstable) sort, so only exact ties can differ.
The target's key is read out of the same key array (not recomputed), so counting is exact.
(1+x)^(-gamma) is computed as exp(-gamma * log(1 + x)) in one place for both the single kernel and
the gamma grid, and D, D' are materialised once per batch, so with the same `query_batch` the
grid's ranks equal the single kernel's bit for bit (checked on CPU and on an H100; a different
query batch may change the matmul's tiling and so the last bit of near-tied distances).
Float32 distances can order two items whose distances differ by about one ulp differently from
torch's float32 cdist; exact ties and everything else are ordered identically.
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
  """The catalog placed on the devices once: embeddings [N_pad, D] and popularity [N_pad].

  Rows past `num_items` are padding (so the table divides over the shards) and never ranked.
  """
  embeddings: jax.Array
  popularity: jax.Array
  num_items: int
  mesh: Mesh | None
  item_axes: tuple[str, ...]

  @property
  def num_shards(self) -> int:
    return _num_shards(self.mesh, self.item_axes)

  @property
  def padded_items(self) -> int:
    return int(self.embeddings.shape[0])


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
  emb = np.zeros((n_pad, embeddings.shape[1]), np.float32)
  emb[:n] = embeddings
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

def _distances(q, e, e_sq):
  """[B, Nl] L2 distances via one matmul (full f32 precision: TF32/bf16 would reorder items)."""
  qe = jnp.dot(q, e.T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  q_sq = jnp.sum(q * q, axis=-1, keepdims=True)
  return jnp.sqrt(jnp.maximum(q_sq - 2.0 * qe + e_sq[None, :], 0.0))


def _row_minmax(d, item_ok, axes):
  """Per-row min-max normalisation with the exact min/max over all shards."""
  lo = jnp.min(jnp.where(item_ok[None, :], d, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(jnp.where(item_ok[None, :], d, -jnp.inf), axis=-1, keepdims=True)
  if axes:
    lo, hi = lax.pmin(lo, axes), lax.pmax(hi, axes)
  span = hi - lo
  return (d - lo) / jnp.where(span > 0, span, 1.0)


def _keys(d, dn, log_pop, log_cf, gamma_pop, gamma_cf, item_ok):
  """The ranking key for one (gamma_pop, gamma_cf); padding items get +inf."""
  key = dn * jnp.exp(-gamma_pop * log_pop)[None, :]
  if log_cf is not None:
    key = key * jnp.exp(-gamma_cf * log_cf)
  plain = (gamma_pop == 0) & (gamma_cf == 0)
  key = jnp.where(plain, d, key)
  return jnp.where(item_ok[None, :], key, jnp.inf)


def _target_ranks(key, gid, targets, axes, num_items):
  """Best 0-based rank over each row's target ids ([B, M], -1 = padding); num_items if none."""
  best = jnp.full((key.shape[0],), num_items, jnp.int32)
  for m in range(targets.shape[1]):
    t = targets[:, m:m + 1]
    kt = jnp.min(jnp.where(gid[None, :] == t, key, jnp.inf), axis=-1, keepdims=True)
    if axes:
      kt = lax.pmin(kt, axes)
    before = (key < kt) | ((key == kt) & (gid[None, :] < t))
    count = jnp.sum(before, axis=-1, dtype=jnp.int32)
    if axes:
      count = lax.psum(count, axes)
    best = jnp.minimum(best, jnp.where(t[:, 0] >= 0, count, num_items))
  return best


@dataclasses.dataclass(frozen=True)
class _Config:
  mesh: Mesh | None
  axes: tuple[str, ...]
  num_items: int
  batch: int
  k: int  # 0: no top-K
  grid: bool  # rank targets for every gamma pair instead of one
  gamma_batch: int


def _shard_body(cfg: _Config, n_local: int, q, e, pop, cf, targets, gammas):
  """Runs on one shard: q [Qp, D] replicated, e [Nl, D], pop [Nl], cf [Qp, Nl] | None."""
  axes = cfg.axes
  shard = lax.axis_index(axes) if axes else 0
  gid = shard * n_local + jnp.arange(n_local, dtype=jnp.int32)
  item_ok = gid < cfg.num_items
  e_sq = jnp.sum(e * e, axis=-1)
  log_pop = jnp.log(1.0 + pop)
  nb = q.shape[0] // cfg.batch
  split = lambda x: None if x is None else x.reshape((nb, cfg.batch) + x.shape[1:])

  def one_batch(xs):
    qb, cb, tb = xs
    # Materialised once per batch: otherwise XLA may fuse (and FMA-contract) the distance into
    # each consumer differently, and the grid's keys would drift from the single kernel's by ulps.
    d = lax.optimization_barrier(_distances(qb, e, e_sq))
    dn = lax.optimization_barrier(_row_minmax(d, item_ok, axes))
    log_cf = None if cb is None else jnp.log(1.0 + cb)
    if cfg.grid:
      def one_gamma(g):
        key = _keys(d, dn, log_pop, log_cf, g[0], g[1], item_ok)
        return _target_ranks(key, gid, tb, axes, cfg.num_items)
      return {"ranks": lax.map(one_gamma, gammas, batch_size=cfg.gamma_batch)}  # [G, B]
    key = _keys(d, dn, log_pop, log_cf, gammas[0, 0], gammas[0, 1], item_ok)
    out = {}
    if cfg.k:
      neg, idx = lax.top_k(-key, min(cfg.k, n_local))
      out["vals"], out["ids"] = -neg, gid[idx]
    if tb is not None:
      out["ranks"] = _target_ranks(key, gid, tb, axes, cfg.num_items)
    return out

  out = lax.map(one_batch, (q.reshape(nb, cfg.batch, -1), split(cf), split(targets)))
  if "vals" in out:
    out["vals"] = out["vals"].reshape(nb * cfg.batch, -1)
    out["ids"] = out["ids"].reshape(nb * cfg.batch, -1)
  if "ranks" in out:
    r = out["ranks"]
    out["ranks"] = (jnp.moveaxis(r, 1, 0).reshape(r.shape[1], -1) if cfg.grid
                    else r.reshape(-1))
  return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run(q, e, pop, cf, targets, gammas, *, cfg: _Config):
  n_local = e.shape[0] // _num_shards(cfg.mesh, cfg.axes)
  body = functools.partial(_shard_body, cfg, n_local)
  if cfg.axes:
    items = _spec(cfg.axes)
    out_specs = {}
    if cfg.k and not cfg.grid:
      out_specs.update(vals=P(None, items), ids=P(None, items))
    if targets is not None:
      out_specs["ranks"] = P()
    in_specs = (P(), P(items, None), P(items), None if cf is None else P(None, items),
                None if targets is None else P(), P())
    body = jax.shard_map(body, mesh=cfg.mesh, in_specs=in_specs, out_specs=out_specs)
  out = body(q, e, pop, cf, targets, gammas)
  if "vals" in out:  # merge the shards' candidates (concatenated in item-id order)
    neg, pos = lax.top_k(-out.pop("vals"), cfg.k)
    out["vals"] = -neg
    out["ids"] = jnp.take_along_axis(out["ids"], pos, axis=1)
  return out


# ----------------------------------------------------------------------------- public API

def _prepare_rows(items: ItemTable, queries, cf, targets, batch: int):
  """Pads queries to a multiple of the batch and places them (replicated) and cf (item-sharded)."""
  queries = np.asarray(queries, dtype=np.float32)
  q_rows, dim = queries.shape
  if dim != items.embeddings.shape[1]:
    raise ValueError(f"queries have dimension {dim}, items {items.embeddings.shape[1]}")
  batch = max(1, min(batch, q_rows))
  qp = -(-q_rows // batch) * batch
  qpad = np.zeros((qp, dim), np.float32)
  qpad[:q_rows] = queries
  cf_pad = None
  if cf is not None:
    cf = np.asarray(cf, dtype=np.float32)
    if cf.shape != (q_rows, items.num_items):
      raise ValueError(f"cf scores have shape {cf.shape}, expected {(q_rows, items.num_items)}")
    cf_pad = np.zeros((qp, items.padded_items), np.float32)
    cf_pad[:q_rows, :items.num_items] = cf
  t_pad = None
  if targets is not None:
    targets = np.asarray(targets, dtype=np.int32)
    if targets.ndim == 1:
      targets = targets[:, None]
    if targets.shape[0] != q_rows:
      raise ValueError(f"{targets.shape[0]} target rows for {q_rows} queries")
    if ((targets < -1) | (targets >= items.num_items)).any():
      raise ValueError("target ids must be in [0, num_items) or -1 (padding)")
    t_pad = np.full((qp, targets.shape[1]), -1, np.int32)
    t_pad[:q_rows] = targets
  if items.mesh is not None:
    rep = NamedSharding(items.mesh, P())
    qpad = jax.device_put(qpad, rep)
    if cf_pad is not None:
      cf_pad = jax.device_put(cf_pad, NamedSharding(items.mesh, P(None, _spec(items.item_axes))))
    if t_pad is not None:
      t_pad = jax.device_put(t_pad, rep)
  return qpad, cf_pad, t_pad, q_rows, batch


def ground(queries, items: ItemTable, *, k: int = 50, targets=None, cf=None,
           gamma_pop: float = 0.0, gamma_cf: float = 0.0, query_batch: int = 256) -> Grounded:
  """Top-K catalog items (and optionally the best rank of each row's targets) for each query.

  queries [Q, D]; targets [Q] or [Q, M] item ids padded with -1 (ids sharing a title count as
  one target: the best of their ranks); cf [Q, N] per-row min-max normalised CF scores (higher =
  better). k=0 skips the top-K. Returns numpy arrays trimmed to Q rows.
  """
  if not 0 <= k <= items.num_items:
    raise ValueError(f"k={k} must be in [0, {items.num_items}]")
  if gamma_cf != 0 and cf is None:
    raise ValueError("gamma_cf is non-zero but no CF scores were given")
  q, cf_pad, t_pad, rows, batch = _prepare_rows(items, queries, cf, targets, query_batch)
  cfg = _Config(items.mesh, items.item_axes, items.num_items, batch, k, False, 1)
  gammas = jnp.asarray([[gamma_pop, gamma_cf]], jnp.float32)
  out = jax.device_get(_run(q, items.embeddings, items.popularity, cf_pad, t_pad, gammas, cfg=cfg))
  return Grounded(
      top_ids=out["ids"][:rows] if k else None,
      top_scores=out["vals"][:rows] if k else None,
      target_ranks=out["ranks"][:rows] if t_pad is not None else None)


def target_ranks_grid(queries, items: ItemTable, targets, gammas, *, cf=None,
                      query_batch: int = 256, gamma_batch: int = 4) -> np.ndarray:
  """[G, Q] best target ranks for every (gamma_pop, gamma_cf) pair in gammas [G, 2].

  Distances and their min-max are computed once per query batch and reused by all gammas, so a
  whole grid costs little more than counting; ranks equal `ground(...).target_ranks` per gamma.
  """
  gammas = np.asarray(gammas, dtype=np.float32)
  if gammas.ndim != 2 or gammas.shape[1] != 2 or len(gammas) == 0:
    raise ValueError(f"gammas must be [G, 2] (pop, cf) pairs, got {gammas.shape}")
  if cf is None and (gammas[:, 1] != 0).any():
    raise ValueError("the grid has non-zero gamma_cf but no CF scores were given")
  q, cf_pad, t_pad, rows, batch = _prepare_rows(items, queries, cf, targets, query_batch)
  cfg = _Config(items.mesh, items.item_axes, items.num_items, batch, 0, True,
                max(1, min(gamma_batch, len(gammas))))
  out = _run(q, items.embeddings, items.popularity, cf_pad, t_pad, jnp.asarray(gammas), cfg=cfg)
  return np.asarray(jax.device_get(out["ranks"]))[:, :rows]
