"""Catalog-aware decoding (the levers of "Decoding Matters", Bao et al. 2024), inside the jitted loop.

Three options of a constrained search, each off by default:
- renormalize: a step's log-probs are renormalised over the trie children the beam may take, so a
  token the catalog forces (its node's only child) costs exactly 0 and a finished title scores
  its log-probability under the catalog-restricted model (no "ghost token" amplification);
- exclusion: per row, items the user already interacted with leave that row's trie; a child stays
  allowed while at least one non-excluded item lies below it (so a title shared by several ids
  goes only when all of them do);
- guidance: per row, an assistant distribution p over items (a CF model's softmax, popularity
  shares, the model's own history-free prior: generate/prior.py) gives every child the mass of
  the items below it; with q = mass(child) / mass of the
  allowed children, a child scores `alpha * (log p_LLM - log q) + log q`, computed as
  `alpha * log p_LLM + (1 - alpha) * log q` with a term dropped when its weight is 0 (so alpha = 1
  is the LLM alone and alpha = 0 the assistant alone, exactly, with no 0 * -inf; alpha > 1 with
  the model's own prior is contrastive decoding).

How it stays cheap and jittable: the catalog is sorted by token sequence once (trie.node_ranges),
so the items below any node are positions [lo, hi) of that order. Each row carries prefix sums
over items in that order ([B, M + 1], M = items in the trie): a node's non-excluded count or
assistant mass is `prefix[hi] - prefix[lo]`, two gathers, with no [B, nodes] table (catalogs of
100k+ items work) and no host callback per step. The prefix arrays are built on the host per batch
(`row_prefixes`) and shard over the data axis like the prompts.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax.generate import trie as trie_lib

Array = jax.Array


class CatalogGuide(NamedTuple):
  """One batch's catalog-aware inputs; a None field switches that lever off.

  The assistant mass prefix sums are float64 on the host, split into a float32 value and its
  float32 remainder: a difference of two float32 prefix sums near 1 would lose every item lighter
  than ~1e-7, while (hi[b] - hi[a]) + (low[b] - low[a]) keeps float32 accuracy relative to the
  node's own mass.
  """
  ranges: trie_lib.NodeRanges  # [S] lo, hi (replicated)
  allowed_prefix: Array | None = None  # [B, M + 1] int32: non-excluded items among the first i
  mass_prefix: Array | None = None  # [B, M + 1] float32: assistant mass of the first i items
  mass_prefix_low: Array | None = None  # [B, M + 1] float32: what float32 rounding left out
  guidance: Array | None = None  # [] float32 alpha (1 = LLM alone, 0 = assistant alone)


# ----------------------------------------------------------------------------- device side

def catalog_logprobs(logp: Array, trie: trie_lib.TrieTables, states: Array,
                     guide: CatalogGuide | None, renormalize: bool, beams_per_row: int) -> Array:
  """[N, vocab] step scores of a constrained beam under the levers (-inf = not allowed).

  logp: [N, vocab] full-vocabulary log-softmax; states: [N] trie nodes; beam n belongs to row
  n // beams_per_row. Most steps have every beam at a node with at most W children, so they are
  scored as [N, W] slots and scattered; a step with a beam at a dense node (near the root)
  scores the whole vocabulary.
  """
  rows = jnp.arange(states.shape[0]) // beams_per_row
  score = lambda lp, child: _slot_scores(lp, child, rows, guide, renormalize)

  def dense(logp):
    return score(logp, trie_lib.child_nodes(trie, states, logp.shape[-1]))

  def sparse(logp):
    vocab = logp.shape[-1]
    tokens = trie.sparse_tokens[states]  # [N, W], padding = vocab
    child = jnp.where(tokens < vocab, trie.sparse_children[states], -1)
    slots = score(jnp.take_along_axis(logp, jnp.minimum(tokens, vocab - 1), axis=1), child)
    out = jnp.full(logp.shape, -jnp.inf, logp.dtype)
    return out.at[jnp.arange(logp.shape[0])[:, None], tokens].set(slots, mode="drop")

  any_dense = jnp.any(trie.dense_row[states] >= 0)
  return jax.lax.cond(any_dense, dense, sparse, logp)


def _slot_scores(logp: Array, child: Array, rows: Array, guide: CatalogGuide | None,
                 renormalize: bool) -> Array:
  """Scores of candidate slots [N, C] leading to trie nodes `child` (-1 = no such child)."""
  allowed = child >= 0
  if guide is not None:
    node = jnp.maximum(child, 0)
    lo, hi = guide.ranges.lo[node], guide.ranges.hi[node]
    if guide.allowed_prefix is not None:  # some non-excluded item must remain below the child
      allowed &= _range_total(guide.allowed_prefix, rows, lo, hi) > 0
  logp = jnp.where(allowed, logp, -jnp.inf)
  if renormalize:
    logp = _renormalized(logp, allowed)
  if guide is not None and guide.mass_prefix is not None:
    mass = (_range_total(guide.mass_prefix, rows, lo, hi)
            + _range_total(guide.mass_prefix_low, rows, lo, hi))
    mass = jnp.where(allowed, jnp.maximum(mass, 0.0), 0.0)  # rounding never makes it negative
    logp = _guided(logp, _log_share(mass), guide.guidance)
  return jnp.where(allowed, logp, -jnp.inf)


def _range_total(prefix: Array, rows: Array, lo: Array, hi: Array) -> Array:
  """prefix[row, hi] - prefix[row, lo]: the row's total over items [lo, hi) ([N, C])."""
  return prefix[rows[:, None], hi] - prefix[rows[:, None], lo]


def _renormalized(logp: Array, allowed: Array) -> Array:
  """log-softmax over the allowed slots only (an only child gets exactly 0: x - logsumexp([x]))."""
  total = jax.nn.logsumexp(logp, axis=-1, keepdims=True)  # -inf where nothing is allowed
  return jnp.where(allowed, logp - total, -jnp.inf)


def _log_share(mass: Array) -> Array:
  """log q = log(mass / sum of the slots' masses); -inf for a massless slot."""
  total = jnp.sum(mass, axis=-1, keepdims=True)
  safe = lambda x: jnp.where(x > 0, x, 1.0)
  return jnp.where(mass > 0, jnp.log(safe(mass)) - jnp.log(safe(total)), -jnp.inf)


def _guided(logp: Array, log_q: Array, alpha: Array) -> Array:
  """alpha * log p + (1 - alpha) * log q, a term left out when its weight is 0.

  alpha > 1 (contrastive, the llm_prior assistant) subtracts log q: a massless slot stays out
  (-inf) instead of gaining (1 - alpha) * -inf = +inf.
  """
  llm = jnp.where(alpha > 0, alpha * logp, 0.0)
  assistant = jnp.where(log_q > -jnp.inf, (1 - alpha) * log_q, -jnp.inf)
  return llm + jnp.where(alpha == 1, 0.0, assistant)


# ----------------------------------------------------------------------------- host side

def item_positions(order: np.ndarray, num_items: int) -> np.ndarray:
  """[num_items] position of each item id in the trie order, -1 for items not in the trie."""
  pos = np.full((num_items,), -1, np.int64)
  pos[order] = np.arange(len(order))
  return pos


def kept_items(order: np.ndarray, num_items: int, excluded: Sequence[Sequence[int]]
               ) -> np.ndarray:
  """[B, M] bool in trie order: False where the row excludes the item."""
  pos = item_positions(order, num_items)
  keep = np.ones((len(excluded), len(order)), bool)
  for b, ids in enumerate(excluded):
    p = pos[np.asarray(list(ids), np.int64)] if len(ids) else np.zeros((0,), np.int64)
    keep[b, p[p >= 0]] = False
  return keep


def count_prefix(keep: np.ndarray) -> np.ndarray:
  """[B, M + 1] int32: how many kept items are among the first i of the order."""
  return np.concatenate([np.zeros((len(keep), 1), np.int32),
                         np.cumsum(keep, axis=1, dtype=np.int64).astype(np.int32)], axis=1)


def mass_prefix(order: np.ndarray, probs: np.ndarray, keep: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
  """([B, M + 1] float32 prefix sums of p over the order, their float32 remainder).

  probs: [B, num_items] assistant probabilities; excluded items weigh 0.
  """
  mass = np.asarray(probs, np.float64)[:, order]
  if keep is not None:
    mass = np.where(keep, mass, 0.0)
  total = np.concatenate([np.zeros((len(mass), 1)), np.cumsum(mass, axis=1)], axis=1)
  high = total.astype(np.float32)
  return high, (total - high).astype(np.float32)


def softmax_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
  """[B, N] float64 softmax of score rows / temperature (a CF assistant's distribution)."""
  z = np.asarray(scores, np.float64) / temperature
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def popularity_probabilities(counts: np.ndarray, rows: int) -> np.ndarray:
  """[rows, N] float64 popularity shares count / total (the MostPop assistant, same per row)."""
  counts = np.asarray(counts, np.float64)
  share = counts / counts.sum() if counts.sum() > 0 else np.full_like(counts, 1 / len(counts))
  return np.broadcast_to(share, (rows, len(counts)))


def row_prefixes(order: np.ndarray, num_items: int,
                 excluded: Sequence[Sequence[int]] | None = None,
                 probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The per-row CatalogGuide fields of a batch (numpy; only those of the levers in use).

  excluded: per row, item ids to leave out; probs: [B, num_items] assistant probabilities.
  """
  keep = None if excluded is None else kept_items(order, num_items, excluded)
  out = {}
  if keep is not None:
    out["allowed_prefix"] = count_prefix(keep)
  if probs is not None:
    out["mass_prefix"], out["mass_prefix_low"] = mass_prefix(order, probs, keep)
  return out
