"""Jitted beam search and greedy decoding with Hugging Face `generate` semantics.

One compiled program per (batch, prompt length) shape: the prompts are prefilled once, then a
`lax.while_loop` decodes one token per step for all B * num_beams beams (beams are a batch
dimension) and exits as soon as no row can improve. Semantics follow transformers' beam search:
- at each step the 2 * num_beams best (beam, token) continuations by summed log-probability are
  kept; those ending in EOS among the top num_beams become finished hypotheses (score = summed
  log-prob / generated_length ** length_penalty) in a separate best-first buffer, the best
  num_beams others keep running; at max_new_tokens every candidate finishes;
- early_stopping=False: a row stops when it has num_beams finished hypotheses and its best
  running beam, normalised by the current length, cannot beat the worst of them (HF's
  heuristic); early_stopping=True: as soon as it has num_beams finished hypotheses;
- tokens after EOS are padding; num_return_sequences best hypotheses come back best-first.
num_beams=1 is greedy decoding (argmax until EOS), as HF does for num_beams=1.
An optional catalog trie (trie.TrieTables) masks the log-probabilities of every step so only
catalog titles can be spelled (HF's prefix_allowed_tokens_fn, done inside the loop).
With `stop_at_closing_quote` (beyond the reference, off by default) a hypothesis also finishes,
exactly as if the token were EOS, once its generated text holds two `"` characters (the closing
quote of a `"Title"` response): `quote_counts` [vocab] gives each token's number of `"`, and
every beam carries its running count, reordered by source beam like the cache.
Catalog-aware decoding (generate/guide.py, beyond the reference, off by default) changes how a
constrained step scores the trie children: `renormalize` (log-probs renormalised over the
allowed children), and a per-batch `guide` (per-row history exclusion and assistant guidance).
With none of them the step is the reference's masked log-softmax, unchanged.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bigrec_jax.data.prompts import PromptFormat
from bigrec_jax.generate import decoder, guide as guide_lib, trie as trie_lib
from bigrec_jax.model.config import LlamaConfig

Array = jax.Array

# Number of times each search program was traced (one per new input shape): tests use it to
# check that buckets compile once.
TRACE_COUNTS: collections.Counter = collections.Counter()

_BIG = 1.0e9  # HF's "very large" score offset for beams that must not be chosen


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Settings of one search program (hashable: part of the jit cache key), except
  `length_penalty`, which the program takes as a traced scalar: one program serves every
  penalty (a decoding grid over it compiles once)."""
  num_beams: int = 4
  num_return_sequences: int = 4
  max_new_tokens: int = 128
  length_penalty: float = 1.0
  early_stopping: bool = False
  eos_token_id: int = 2
  pad_token_id: int = 0
  stop_at_closing_quote: bool = False  # finish at the 2nd `"` (needs quote_counts)
  renormalize: bool = False  # constrained steps: log-softmax over the allowed children only

  def __post_init__(self):
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
    if not 1 <= self.num_return_sequences <= self.num_beams:
      raise ValueError(f"num_return_sequences must be in 1..num_beams ({self.num_beams}), "
                       f"got {self.num_return_sequences}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class SearchOutput(NamedTuple):
  """Best-first hypotheses per prompt; R = num_return_sequences, T = max_new_tokens."""
  tokens: Array  # [B, R, T] int32 generated tokens (EOS included), padding after
  scores: Array  # [B, R] float32 sum of log-probs / length ** length_penalty
  lengths: Array  # [B, R] int32 generated tokens incl. EOS; 0 = no hypothesis (constrained)


CLOSING_QUOTE_COUNT = PromptFormat.closing_quotes  # the `"` of the answer that closes its title


def search(config: LlamaConfig, search_config: SearchConfig, params, ids, mask,
           trie: trie_lib.TrieTables | None = None, quote_counts=None, *,
           prefix_len: int = 0, guide: guide_lib.CatalogGuide | None = None) -> SearchOutput:
  """Generates for left-padded prompts ids/mask [B, P] (jitted; compiles once per shape).

  params must be plain base weights (merge LoRA first with `lora.merge`); arrays may be sharded
  over a mesh (the batch on its data axis), the program then runs SPMD. quote_counts: [vocab]
  int32 number of `"` in each token's text (`token_quote_counts`), required by
  `stop_at_closing_quote`, ignored otherwise. prefix_len > 0: every real prompt begins with
  these many identical tokens, prefilled once (decoder.prefill); the result is the same.
  guide: per-row exclusion / assistant inputs (guide.CatalogGuide, rows like ids); with
  `renormalize` it needs the trie.
  """
  if (search_config.renormalize or guide is not None) and trie is None:
    raise ValueError("renormalize, exclusion and guidance need the catalog trie")
  if search_config.stop_at_closing_quote:
    if quote_counts is None:
      raise ValueError("stop_at_closing_quote needs quote_counts (the `\"` count per token)")
  else:
    quote_counts = None
  program = _compiled(config, dataclasses.replace(search_config, length_penalty=0.0),
                      trie is not None, prefix_len)
  return program(params, ids, mask, trie, quote_counts, guide,
                 jnp.float32(search_config.length_penalty))


def token_quote_counts(tokenizer, vocab_size: int):
  """numpy int32 [vocab_size]: how many `"` each token id decodes to (0 beyond the tokenizer)."""
  import numpy as np

  n = min(len(tokenizer), vocab_size)
  texts = tokenizer.batch_decode([[i] for i in range(n)])
  counts = np.zeros((vocab_size,), np.int32)
  counts[:n] = [t.count('"') for t in texts]
  return counts


@functools.lru_cache(maxsize=None)
def _compiled(config: LlamaConfig, sc: SearchConfig, constrained: bool, prefix_len: int):
  def run(params, ids, mask, trie, quotes, guide, length_penalty):
    TRACE_COUNTS["search"] += 1
    search_fn = _greedy if sc.num_beams == 1 else _beam
    return search_fn(config, sc, params, ids, mask, trie if constrained else None, quotes,
                     prefix_len, guide, length_penalty)

  return jax.jit(run)


def _mask_logprobs(logp: Array, trie, states: Array) -> Array:
  if trie is None:
    return logp
  return jnp.where(trie_lib.allowed_mask(trie, states, logp.shape[-1]), logp, -jnp.inf)


def _step_logprobs(logits: Array, trie, states: Array, guide, sc: SearchConfig,
                   beams_per_row: int) -> Array:
  """[N, vocab] what each next token adds to a beam's score (-inf = not allowed)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  if trie is None or not (sc.renormalize or guide is not None):
    return _mask_logprobs(logp, trie, states)  # the reference: masked full-vocabulary log-probs
  return guide_lib.catalog_logprobs(logp, trie, states, guide, sc.renormalize, beams_per_row)


def _penalty(length, length_penalty):
  return jnp.asarray(length, jnp.float32) ** length_penalty


def _beam(config: LlamaConfig, sc: SearchConfig, params, ids, mask, trie, quotes,
          prefix_len: int, guide, length_penalty) -> SearchOutput:
  b = ids.shape[0]
  k, t_max = sc.num_beams, sc.max_new_tokens
  n = b * k
  logits0, prompt = decoder.prefill(config, params, ids, mask, prefix_len)
  vocab = logits0.shape[-1]
  # All beams of a row start from the same prompt: beam 0 scores 0, the others -1e9 (as HF), so
  # the first step picks distinct tokens from one distribution.
  logits0 = jnp.repeat(logits0, k, axis=0)
  run_scores = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, -_BIG) * jnp.ones((b, 1))
  own = jnp.arange(n, dtype=jnp.int32)
  state = dict(
      step=jnp.zeros((), jnp.int32), logits=logits0,
      run_tokens=jnp.full((b, k, t_max), sc.pad_token_id, jnp.int32),
      run_scores=run_scores.astype(jnp.float32),
      ancestors=jnp.broadcast_to(own[:, None], (n, t_max)),
      trie_state=jnp.zeros((n,), jnp.int32), quotes=jnp.zeros((n,), jnp.int32),
      fin_tokens=jnp.full((b, k, t_max), sc.pad_token_id, jnp.int32),
      fin_scores=jnp.full((b, k), -_BIG, jnp.float32),
      fin_flag=jnp.zeros((b, k), bool), fin_len=jnp.zeros((b, k), jnp.int32),
      open=jnp.ones((b,), bool),
      cache=decoder.init_gen_cache(config, n, t_max))
  top_num_beams = jnp.arange(2 * k) < k

  def select(s):
    """Chooses token `step` for every beam (HF's top-k / running / finished update)."""
    j = s["step"]
    logp = _step_logprobs(s["logits"], trie, s["trie_state"], guide, sc, k)
    total = (logp.reshape(b, k, vocab) + s["run_scores"][:, :, None]).reshape(b, k * vocab)
    cand_scores, flat = jax.lax.top_k(total, 2 * k)  # [B, 2K], best first
    src, tok = flat // vocab, (flat % vocab).astype(jnp.int32)
    cand_tokens = jnp.take_along_axis(s["run_tokens"], src[:, :, None], axis=1)
    cand_tokens = jax.lax.dynamic_update_slice_in_dim(cand_tokens, tok[:, :, None], j, axis=2)
    valid = cand_scores > -jnp.inf
    hits = (tok == sc.eos_token_id) | (j + 1 >= t_max)
    if quotes is not None:  # the candidate's text now holds its closing quote: it finishes
      src_quotes = s["quotes"].reshape(b, k)[jnp.arange(b)[:, None], src]
      cand_quotes = src_quotes + quotes[tok]
      hits = hits | (cand_quotes >= CLOSING_QUOTE_COUNT)
      # A beam kept only as filler (score -1e9, when fewer than K candidates were unfinished,
      # e.g. under the trie) has its quote already: nothing it continues with is a hypothesis.
      valid = valid & (src_quotes < CLOSING_QUOTE_COUNT)

    # Running beams: the best K candidates that did not just finish.
    run_cand = cand_scores - hits.astype(jnp.float32) * _BIG
    run_scores, pick = jax.lax.top_k(run_cand, k)
    run_src = jnp.take_along_axis(src, pick, axis=1)  # [B, K] source beam within the row
    run_tok = jnp.take_along_axis(tok, pick, axis=1)
    run_tokens = jnp.take_along_axis(cand_tokens, pick[:, :, None], axis=1)
    flat_src = (run_src + jnp.arange(b)[:, None] * k).reshape(n)
    ancestors = s["ancestors"][flat_src]
    ancestors = jax.lax.dynamic_update_slice_in_dim(ancestors, own[:, None], j, axis=1)
    trie_state = s["trie_state"]
    if trie is not None:
      trie_state = trie_lib.advance(trie, trie_state[flat_src], run_tok.reshape(n))
    run_quotes = s["quotes"]
    if quotes is not None:
      run_quotes = jnp.take_along_axis(cand_quotes, pick, axis=1).reshape(n)

    # Finished hypotheses: candidates among the top K that hit EOS / max length.
    just = hits & top_num_beams[None, :] & valid
    fin_cand = cand_scores / _penalty(j + 1, length_penalty)
    fin_cand = fin_cand - (~s["open"])[:, None].astype(jnp.float32) * _BIG
    fin_cand = fin_cand - (~just).astype(jnp.float32) * _BIG
    merged_scores = jnp.concatenate([s["fin_scores"], fin_cand], axis=1)
    fin_scores, keep = jax.lax.top_k(merged_scores, k)
    gather = lambda a, c: jnp.take_along_axis(jnp.concatenate([a, c], axis=1), keep, axis=1)
    fin_flag = gather(s["fin_flag"], just)
    fin_len = gather(s["fin_len"], jnp.full((b, 2 * k), j + 1, jnp.int32))
    fin_tokens = jnp.take_along_axis(jnp.concatenate([s["fin_tokens"], cand_tokens], axis=1),
                                     keep[:, :, None], axis=1)

    # Can a row still improve? (HF's heuristic for early_stopping=False, monotone per row.)
    best_running = run_scores[:, 0] / _penalty(j + 1, length_penalty)
    worst = jnp.where(fin_flag, jnp.min(fin_scores, axis=1, keepdims=True), -_BIG)
    still = jnp.any(best_running[:, None] > worst, axis=1)
    if sc.early_stopping:
      still = still & ~jnp.all(fin_flag, axis=1)
    return dict(s, step=j + 1, run_tokens=run_tokens, run_scores=run_scores,
                ancestors=ancestors, trie_state=trie_state, quotes=run_quotes,
                fin_tokens=fin_tokens,
                fin_scores=fin_scores, fin_flag=fin_flag, fin_len=fin_len,
                open=s["open"] & still)

  def cond(s):
    return (s["step"] < t_max) & jnp.any(s["open"])

  def body(s):
    j = s["step"] - 1  # feed the tokens chosen at step j, then choose step j + 1
    tokens = s["run_tokens"][:, :, j].reshape(n)
    logits, cache = decoder.decode_step(config, params, prompt, s["cache"], s["ancestors"],
                                        tokens, j)
    return select(dict(s, logits=logits, cache=cache))

  state = jax.lax.while_loop(cond, body, select(state))
  r = sc.num_return_sequences
  lengths = jnp.where(state["fin_flag"], state["fin_len"], 0)[:, :r]
  return SearchOutput(state["fin_tokens"][:, :r], state["fin_scores"][:, :r], lengths)


def _greedy(config: LlamaConfig, sc: SearchConfig, params, ids, mask, trie, quotes,
            prefix_len: int, guide, length_penalty) -> SearchOutput:
  b, t_max = ids.shape[0], sc.max_new_tokens
  logits0, prompt = decoder.prefill(config, params, ids, mask, prefix_len)
  ancestors = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t_max))
  state = dict(step=jnp.zeros((), jnp.int32), logits=logits0,
               tokens=jnp.full((b, t_max), sc.pad_token_id, jnp.int32),
               logp_sum=jnp.zeros((b,), jnp.float32), length=jnp.zeros((b,), jnp.int32),
               done=jnp.zeros((b,), bool), trie_state=jnp.zeros((b,), jnp.int32),
               quotes=jnp.zeros((b,), jnp.int32), cache=decoder.init_gen_cache(config, b, t_max))

  def select(s):
    j = s["step"]
    logp = _step_logprobs(s["logits"], trie, s["trie_state"], guide, sc, 1)
    tok = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    live = ~s["done"]
    chosen = jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
    tok = jnp.where(live, tok, sc.pad_token_id)
    trie_state = s["trie_state"]
    if trie is not None:
      trie_state = trie_lib.advance(trie, trie_state, tok)
    done = s["done"] | (tok == sc.eos_token_id)
    run_quotes = s["quotes"]
    if quotes is not None:  # a live row whose text now holds its closing quote is done
      run_quotes = run_quotes + jnp.where(live, quotes[tok], 0)
      done = done | (run_quotes >= CLOSING_QUOTE_COUNT)
    return dict(s, step=j + 1,
                tokens=jax.lax.dynamic_update_slice_in_dim(s["tokens"], tok[:, None], j, axis=1),
                logp_sum=s["logp_sum"] + jnp.where(live, chosen, 0.0),
                length=s["length"] + live.astype(jnp.int32),
                done=done, trie_state=trie_state, quotes=run_quotes)

  def cond(s):
    return (s["step"] < t_max) & ~jnp.all(s["done"])

  def body(s):
    j = s["step"] - 1
    logits, cache = decoder.decode_step(config, params, prompt, s["cache"], ancestors,
                                        s["tokens"][:, j], j)
    return select(dict(s, logits=logits, cache=cache))

  state = jax.lax.while_loop(cond, body, select(state))
  scores = state["logp_sum"] / _penalty(jnp.maximum(state["length"], 1), length_penalty)
  return SearchOutput(state["tokens"][:, None], scores[:, None], state["length"][:, None])
