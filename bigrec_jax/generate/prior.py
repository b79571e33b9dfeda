"""The model's own catalog prior: its title distribution given a prompt with no history.

A fine-tuned model that barely reads the history puts most of its mass on the same few titles
for every user (the demo's LoRA: Mortal Kombat is the best beam of a quarter of the rows). The
`llm_prior` assistant of the guided search (generate/guide.py) takes that shared part out,
as in contrastive / pointwise-mutual-information decoding: with q the same model's distribution
over catalog items after a history-free prompt and alpha > 1, a trie child scores

    alpha * log p(y | h) + (1 - alpha) * log q(y) = log p(y | h) + (alpha - 1) * log(p(y | h) / q(y)),

so titles the model says whatever the user watched lose, and titles this user's history makes
more likely than usual win. It reads no interaction data (only the model), so a search guided
by it is still BIGRec "with no statistics anywhere".

q(item) is the softmax over the catalog of each title's teacher-forced log-likelihood (its
trie token sequence after the history-free prompt); with a renormalised search each step of it
is renormalised over the trie's children too. The guide gives a trie child the mass of the
items below it, which makes q's conditional of the child exactly the restricted model's
next-token distribution under the empty history, on the scale the search scores p. (Without
that renormalisation, a title whose later tokens the catalog forces but the model finds
unlikely gets a tiny q and a p_renormalised near 1: the ratio explodes onto such titles.)
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax.generate import trie as trie_lib
from bigrec_jax.model import llama

Array = jax.Array


def title_log_likelihoods(config, params, prompt: Sequence[int],
                          sequences: Sequence[Sequence[int] | None], *,
                          trie_sequences: Sequence[Sequence[int] | None] | None = None,
                          batch_size: int = 32, bucket_multiple: int = 8,
                          sharding=None) -> np.ndarray:
  """[len(sequences)] float64: log p(sequence | prompt), summed over its tokens; -inf for None.

  trie_sequences (the catalog trie's sequences; `sequences` are prefixes of them): each step is
  renormalised over the tokens the trie allows after that prefix, as a renormalised search
  scores it (an only child costs exactly 0), so q and the search's p share one scale; without
  it, full-vocabulary log-probs.
  The prompt's K/V are computed once per batch (llama.prefix_then_suffix) and every sequence
  attends to them. Sequences are batched shortest first and padded to a multiple of
  `bucket_multiple` (one compiled program per bucket); a last batch is filled with copies of
  its first row. sharding: where each batch is placed (None = the default device).
  """
  prompt = np.asarray(prompt, np.int32)
  keep = sorted((i for i, s in enumerate(sequences) if s), key=lambda i: len(sequences[i]))
  out = np.full((len(sequences),), -np.inf, np.float64)
  trie = (None if trie_sequences is None
          else trie_lib.children_of([t for t in trie_sequences if t], config.vocab_size))
  p = len(prompt)
  for start in range(0, len(keep), batch_size):
    chunk = keep[start:start + batch_size]
    rows = chunk + [chunk[0]] * (batch_size - len(chunk))
    width = -(-len(sequences[chunk[-1]]) // bucket_multiple) * bucket_multiple
    ids = np.zeros((batch_size, p + width), np.int32)
    mask = np.zeros_like(ids)
    for b, i in enumerate(rows):
      seq = np.asarray(sequences[i], np.int32)
      pad = width - len(seq)  # left padding, then the prompt, then the sequence
      ids[b, pad:pad + p] = prompt
      ids[b, pad + p:] = seq
      mask[b, pad:] = 1
    allowed = None if trie is None else _allowed_tokens(trie, [sequences[i] for i in rows], width)
    arrays = (ids, mask, allowed)
    if sharding is not None:
      arrays = jax.device_put(arrays, sharding)
    scores = np.asarray(_sequence_log_likelihoods(config, params, *arrays, prefix_len=p),
                        np.float64)
    out[chunk] = scores[:len(chunk)]
  return out


def _allowed_tokens(trie: list[dict[int, int]], rows: Sequence[Sequence[int]],
                    width: int) -> np.ndarray:
  """[B, width, W] int32: the trie's tokens before each (right-aligned) token, -1 padding; W a
  power of two (few compiled shapes). trie: trie.children_of's {token: child} per node."""
  lists = []
  for seq in rows:
    node, steps = 0, []
    for tok in seq:
      steps.append(list(trie[node]))
      node = trie[node][int(tok)]
    lists.append(steps)
  most = max(len(c) for row in lists for c in row)
  w = 1 << (most - 1).bit_length()
  out = np.full((len(rows), width, w), -1, np.int32)
  for b, row in enumerate(lists):
    for t, c in enumerate(row):
      out[b, width - len(row) + t, :len(c)] = c
  return out


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("prefix_len",))
def _sequence_log_likelihoods(config, params, ids: Array, mask: Array, allowed: Array | None, *,
                              prefix_len: int) -> Array:
  """[B] summed log-probs of each row's tokens after the shared `prefix_len`-token prompt
  (allowed [B, S, W]: each step renormalised over those tokens)."""
  prefix_hidden, suffix_hidden, _ = llama.prefix_then_suffix(config, params, ids, mask, prefix_len)
  s = ids.shape[1] - prefix_len
  lengths = jnp.sum(mask, axis=1) - prefix_len  # tokens of each row's sequence
  slot = jnp.arange(s)[None, :]
  first = slot == (s - lengths)[:, None]  # the sequence's first token: predicted by the prompt
  before = jnp.concatenate([jnp.zeros_like(suffix_hidden[:, :1]), suffix_hidden[:, :-1]], axis=1)
  hidden = jnp.where(first[..., None], prefix_hidden[:, -1:], before)
  logp = jax.nn.log_softmax(llama.output_logits(config, params, hidden), axis=-1)
  token = jnp.take_along_axis(logp, ids[:, prefix_len:, None], axis=-1)[..., 0]
  if allowed is not None:
    sib = jnp.take_along_axis(logp, jnp.maximum(allowed, 0), axis=-1)
    token = token - jax.nn.logsumexp(jnp.where(allowed >= 0, sib, -jnp.inf), axis=-1)
  return jnp.sum(jnp.where(slot >= (s - lengths)[:, None], token, 0.0), axis=1)


def catalog_prior(log_likelihoods: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """[num_items] float64 q: softmax of the titles' log-likelihoods / temperature (0 for -inf)."""
  z = np.asarray(log_likelihoods, np.float64) / temperature
  finite = np.isfinite(z)
  if not finite.any():
    raise ValueError("no catalog title has a finite log-likelihood")
  e = np.where(finite, np.exp(z - z[finite].max()), 0.0)
  return e / e.sum()
