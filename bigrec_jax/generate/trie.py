"""Constrained decoding: a prefix trie over the catalog's titles as device-side transition tables.

Each catalog title becomes the token sequence a model is trained to emit for it: `"Title"` followed
by EOS, tokenized in context right after `### Response:\\n` (tokenizers may split a title
differently alone than after the prompt). A beam's trie node says which tokens may come next.

The trie is stored for the jitted loop as two tables (most nodes have one or two children, a few
near the root have thousands):
- sparse: for every node, up to W (token, child) pairs, padded with token = vocab (dropped);
- dense: for the few nodes with more than W children, a full [vocab] row of child ids (-1 = not
  allowed), found through `dense_row`.
Node 0 is the root; the last node is a sink with no children (a beam that left the trie).

For catalog-aware decoding (generate/guide.py) the items are also sorted by token sequence, so the
items below any node are a contiguous range [lo, hi) of that order (`NodeRanges`): per-item
quantities of a row then reach every node as a difference of the row's prefix sums.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax.data import prompts

Array = jax.Array
log = logging.getLogger(__name__)


class TrieTables(NamedTuple):
  sparse_tokens: Any  # [S, W] int32, padding = vocab_size
  sparse_children: Any  # [S, W] int32
  dense_row: Any  # [S] int32 row of dense_children, -1 for sparse nodes
  dense_children: Any  # [R, vocab] int32 child id or -1 (R >= 1; row 0 unused when no dense)

  @property
  def num_nodes(self) -> int:
    return int(self.dense_row.shape[0])

  @property
  def sink(self) -> int:
    return self.num_nodes - 1


def children_of(sequences: Sequence[Sequence[int]], vocab_size: int) -> list[dict[int, int]]:
  """The trie as {token: child} per node, nodes numbered in insertion order (0 = root)."""
  children: list[dict[int, int]] = [{}]
  for seq in sequences:
    node = 0
    for tok in seq:
      tok = int(tok)
      if not 0 <= tok < vocab_size:
        raise ValueError(f"token {tok} outside the vocabulary (size {vocab_size})")
      nxt = children[node].get(tok)
      if nxt is None:
        nxt = len(children)
        children[node][tok] = nxt
        children.append({})
      node = nxt
  return children


def build_tables(sequences: Sequence[Sequence[int]], vocab_size: int,
                 max_sparse_width: int = 16) -> TrieTables:
  """Tables (numpy) for the prefix trie of token sequences (each should end with EOS)."""
  children = children_of(sequences, vocab_size)
  children.append({})  # sink
  num = len(children)
  branching = np.array([len(c) for c in children])
  width = int(max(1, min(max_sparse_width, branching.max())))
  sparse_tokens = np.full((num, width), vocab_size, np.int32)
  sparse_children = np.full((num, width), num - 1, np.int32)
  dense_nodes = np.flatnonzero(branching > width)
  dense_row = np.full((num,), -1, np.int32)
  dense_children = np.full((max(1, len(dense_nodes)), vocab_size), -1, np.int32)
  for r, node in enumerate(dense_nodes):
    dense_row[node] = r
    items = children[node]
    dense_children[r, list(items)] = list(items.values())
  for node, items in enumerate(children):
    if len(items) <= width and items:
      sparse_tokens[node, :len(items)] = list(items)
      sparse_children[node, :len(items)] = list(items.values())
  return TrieTables(sparse_tokens, sparse_children, dense_row, dense_children)


def to_device(tables, sharding=None):
  """TrieTables (or NodeRanges) as jax arrays (replicated over a mesh when a sharding is given)."""
  put = (lambda a: jax.device_put(np.asarray(a), sharding)) if sharding is not None else jnp.asarray
  return type(tables)(*(put(a) for a in tables))


def allowed_mask(tables: TrieTables, states: Array, vocab_size: int) -> Array:
  """[N, vocab] bool: the tokens each beam may emit from its trie node."""
  n = states.shape[0]
  sparse = jnp.zeros((n, vocab_size), bool).at[
      jnp.arange(n)[:, None], tables.sparse_tokens[states]].set(True, mode="drop")
  row = tables.dense_row[states]
  dense = tables.dense_children[jnp.maximum(row, 0)] >= 0
  return jnp.where((row >= 0)[:, None], dense, sparse)


def child_nodes(tables: TrieTables, states: Array, vocab_size: int) -> Array:
  """[N, vocab] int32: the child each token leads to from each beam's node, -1 if not allowed."""
  n = states.shape[0]
  sparse = jnp.full((n, vocab_size), -1, jnp.int32).at[
      jnp.arange(n)[:, None], tables.sparse_tokens[states]].set(
          tables.sparse_children[states], mode="drop")
  row = tables.dense_row[states]
  dense = tables.dense_children[jnp.maximum(row, 0)]
  return jnp.where((row >= 0)[:, None], dense, sparse)


def advance(tables: TrieTables, states: Array, tokens: Array) -> Array:
  """[N] child node after emitting `tokens` from `states` (the sink when not allowed)."""
  row = tables.dense_row[states]
  dense_child = tables.dense_children[jnp.maximum(row, 0), tokens]
  match = tables.sparse_tokens[states] == tokens[:, None]
  sparse_child = jnp.max(jnp.where(match, tables.sparse_children[states], -1), axis=1)
  child = jnp.where(row >= 0, dense_child, sparse_child)
  return jnp.where(child >= 0, child, tables.num_nodes - 1).astype(jnp.int32)


class NodeRanges(NamedTuple):
  """Items below each node: positions [lo, hi) of the catalog sorted by token sequence."""
  lo: Any  # [S] int32 (the sink: an empty range)
  hi: Any  # [S] int32


class CatalogTrie(NamedTuple):
  tables: TrieTables
  longest: int  # tokens of the longest title, EOS included
  ranges: NodeRanges | None  # None unless asked for (catalog-aware decoding)
  order: np.ndarray | None  # [M] item ids sorted by token sequence (titles in the trie only)


def node_ranges(sequences: Sequence[Sequence[int] | None], vocab_size: int
                ) -> tuple[NodeRanges, np.ndarray]:
  """(ranges, order) for the trie `build_tables` makes of the non-None sequences (same node ids).

  Sorting the items by token sequence makes every prefix a contiguous run of the order; titles
  shared by several items are adjacent there and end on the same leaf.
  """
  present = [i for i, s in enumerate(sequences) if s is not None]
  children = children_of([sequences[i] for i in present], vocab_size)
  order = np.asarray(sorted(present, key=lambda i: list(sequences[i])), np.int64)
  num = len(children) + 1  # + the sink
  lo = np.zeros((num,), np.int32)
  hi = np.zeros((num,), np.int32)
  for rank, item in enumerate(order.tolist()):
    node = 0
    for tok in [None] + list(sequences[item]):
      node = node if tok is None else children[node][int(tok)]
      if hi[node] == 0:  # first (smallest-rank) item through this node
        lo[node] = rank
      hi[node] = rank + 1
  return NodeRanges(lo, hi), order


def title_sequences(tokenizer, titles: Sequence[str], context: str | None = None,
                    eos_token_id: int | None = None) -> list[list[int]]:
  """Token ids of `"Title"` + EOS as a training target tokenizes them right after `context`
  (default: `PromptFormat().trie_context()`, the alpaca prompt's).

  A title whose tokens would merge with the end of the prompt cannot be produced by generation
  (the prompt is tokenized alone); such titles are skipped with a warning.
  """
  return [s for s in title_sequences_by_item(tokenizer, titles, context, eos_token_id)
          if s is not None]


def title_sequences_by_item(tokenizer, titles: Sequence[str], context: str | None = None,
                            eos_token_id: int | None = None) -> list[list[int] | None]:
  """`title_sequences` aligned with `titles`: None for a title that cannot be generated."""
  context = prompts.PromptFormat().trie_context() if context is None else context
  eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
  ctx = list(tokenizer(context)["input_ids"])
  texts = [context + prompts.quote(t) for t in titles]
  out, skipped = [], []
  for start in range(0, len(texts), 4096):
    for title, ids in zip(titles[start:start + 4096],
                          tokenizer(texts[start:start + 4096])["input_ids"]):
      ids = list(ids)
      if ids[:len(ctx)] != ctx:
        skipped.append(title)
        out.append(None)
        continue
      out.append(ids[len(ctx):] + [eos])
  if skipped:
    log.warning("%d catalog title(s) tokenize across the prompt boundary and cannot be "
                "generated; left out of the trie, e.g. %r", len(skipped), skipped[0])
  return out


def catalog_tables(tokenizer, titles: Sequence[str], vocab_size: int, context: str | None = None,
                   eos_token_id: int | None = None) -> tuple[TrieTables, int]:
  """(tables, longest title in tokens incl. EOS) for a catalog of titles."""
  trie = catalog_trie(tokenizer, titles, vocab_size, context, eos_token_id)
  return trie.tables, trie.longest


def catalog_trie(tokenizer, titles: Sequence[str], vocab_size: int, context: str | None = None,
                 eos_token_id: int | None = None, with_ranges: bool = False) -> CatalogTrie:
  """The catalog's trie; with_ranges: also each node's item range in token-sequence order."""
  by_item = title_sequences_by_item(tokenizer, titles, context, eos_token_id)
  seqs = [s for s in by_item if s is not None]
  if not seqs:
    raise ValueError("no catalog title can be generated (empty trie)")
  ranges, order = node_ranges(by_item, vocab_size) if with_ranges else (None, None)
  return CatalogTrie(build_tables(seqs, vocab_size), max(len(s) for s in seqs), ranges, order)
