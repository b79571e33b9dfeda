"""Catalog-aware decoding (generate/guide.py) on a tiny random model: every lever against brute force.

A 7-item catalog of 6 distinct titles (items 0 and 5 share one), searched with as many beams as
titles, so nothing is pruned and every title comes back with its exact score. Real-model checks
are in test_guide_smollm2.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.generate import beam_search, guide as guide_lib, trie as trie_lib
from bigrec_jax.model import LlamaConfig, forward, init_params

EOS = 1
CONFIG = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=EOS, pad_token_id=0,
                     bos_token_id=None)
# Item id -> token sequence. After 8, 9 the catalog forces 10, 11, EOS (only item 3 goes there);
# item 5 repeats item 0's title.
ITEMS = [[3, 4, 5, 1], [3, 4, 6, 1], [3, 7, 1], [8, 9, 10, 11, 1], [8, 2, 1], [3, 4, 5, 1], [9, 1]]
TITLES = sorted({tuple(s) for s in ITEMS})
PROMPTS = np.array([[2, 3, 4, 2], [0, 0, 4, 3], [5, 6, 2, 7]], np.int32)
MASKS = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], np.int32)


@pytest.fixture(scope="module")
def params():
  p = init_params(CONFIG, jax.random.key(3))
  return {**p, "embed": p["embed"] * 4.0}  # moderately peaked: scores differ clearly


def _catalog(width: int = 2):
  """(device tables, device ranges, order). Width 2 makes the root (3 children) a dense node and
  every other node sparse, so one search runs both scoring paths (guide.catalog_logprobs)."""
  tables = trie_lib.to_device(trie_lib.build_tables(ITEMS, CONFIG.vocab_size, width))
  ranges, order = trie_lib.node_ranges(ITEMS, CONFIG.vocab_size)
  return tables, trie_lib.NodeRanges(*(jnp.asarray(a) for a in ranges)), order


def _search(params, tables, *, guide=None, renormalize=False, length_penalty=0.0, beams=6):
  sc = beam_search.SearchConfig(num_beams=beams, num_return_sequences=beams, max_new_tokens=6,
                                length_penalty=length_penalty, eos_token_id=EOS, pad_token_id=0,
                                renormalize=renormalize)
  return beam_search.search(CONFIG, sc, params, PROMPTS, MASKS, tables, guide=guide)


def _guide(ranges, order, excluded=None, probs=None, alpha=1.0):
  arrays = guide_lib.row_prefixes(order, len(ITEMS), excluded, probs)
  return guide_lib.CatalogGuide(ranges, **{k: jnp.asarray(v) for k, v in arrays.items()},
                                guidance=jnp.float32(alpha) if probs is not None else None)


def _returned(out, row):
  return [tuple(int(x) for x in t[:n]) for t, n in zip(np.asarray(out.tokens[row]),
                                                       np.asarray(out.lengths[row])) if n > 0]


# Jitted (one compile per sequence length, shared by every test): run eagerly, the layer scan
# compiled again on every call, ~3 s each, most of this file's time.
_forward = jax.jit(lambda params, ids: forward(CONFIG, params, ids, jnp.ones_like(ids))[0])


def _step_logprobs(params, row: int, title) -> np.ndarray:
  """[T, vocab] the model's full log-softmax before each token of `title` (plain forward)."""
  prompt = PROMPTS[row][MASKS[row] == 1]
  ids = np.concatenate([prompt, np.asarray(title[:-1], np.int32)])[None]
  logits = _forward(params, ids)
  return np.asarray(jax.nn.log_softmax(logits[0, len(prompt) - 1:], axis=-1), np.float64)


def _children(prefix):
  return sorted({t[len(prefix)] for t in TITLES if t[:len(prefix)] == prefix})


def _restricted_logprob(params, row, title) -> float:
  """log p(title) under the model renormalised over the catalog's children at every step."""
  logp = _step_logprobs(params, row, title)
  total = 0.0
  for t, tok in enumerate(title):
    allowed = logp[t, _children(title[:t])]
    total += logp[t, tok] - np.log(np.exp(allowed).sum())
  return total


def _raw_logprob(params, row, title) -> float:
  logp = _step_logprobs(params, row, title)
  return float(sum(logp[t, tok] for t, tok in enumerate(title)))


def test_node_ranges_cover_exactly_the_items_below_each_node():
  tables = trie_lib.build_tables(ITEMS, CONFIG.vocab_size)
  ranges, order = trie_lib.node_ranges(ITEMS, CONFIG.vocab_size)
  advance = lambda node, tok: int(trie_lib.advance(trie_lib.to_device(tables),
                                                   jnp.array([node]), jnp.array([tok]))[0])
  prefixes = {t[:i] for t in TITLES for i in range(len(t) + 1)}
  for prefix in prefixes:
    node = 0
    for tok in prefix:
      node = advance(node, tok)
    below = sorted(i for i, s in enumerate(ITEMS) if tuple(s[:len(prefix)]) == prefix)
    assert sorted(order[ranges.lo[node]:ranges.hi[node]].tolist()) == below, prefix
  assert ranges.lo[-1] == ranges.hi[-1]  # the sink covers nothing


@pytest.mark.parametrize("width", [16, 2])
def test_renormalised_forced_token_adds_exactly_zero(width):
  tables, ranges, _ = _catalog(width)
  rng = np.random.default_rng(0)
  logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(4, CONFIG.vocab_size)), jnp.float32))
  # Nodes after [8, 9], [8, 9, 10], [8, 9, 10, 11]: one child each (10, 11, EOS); the root
  # (3 children, dense when width = 2) rides along so both scoring paths run.
  states, node = [], 0
  for tok in (8, 9, 10, 11):
    node = int(trie_lib.advance(tables, jnp.array([node]), jnp.array([tok]))[0])
    states.append(node)
  states = jnp.array(states[1:] + [0])
  for g in (None, guide_lib.CatalogGuide(ranges)):
    out = np.asarray(guide_lib.catalog_logprobs(logp, tables, states, g, True, 1))
    for row, forced in enumerate((10, 11, EOS)):
      assert out[row, forced] == 0.0
      assert np.all(np.isneginf(np.delete(out[row], forced)))


def test_renormalised_beams_equal_catalog_restricted_log_probs(params):
  """Beams == titles: every title returns, scored by the brute-force restricted log-prob, and the
  best beam is the restricted argmax (which the raw-score search need not pick)."""
  tables, _, _ = _catalog()
  out = _search(params, tables, renormalize=True)
  for row in range(len(PROMPTS)):
    got = _returned(out, row)
    assert sorted(got) == TITLES
    want = {t: _restricted_logprob(params, row, t) for t in TITLES}
    np.testing.assert_allclose(np.asarray(out.scores[row]), [want[t] for t in got], atol=2e-5)
    assert got[0] == max(want, key=want.get)
    # The forced chain after 8, 9 adds nothing: the title scores its first two steps alone.
    chain = got.index((8, 9, 10, 11, 1))
    assert float(out.scores[row, chain]) == pytest.approx(
        _restricted_logprob(params, row, (8, 9)), abs=2e-5)


def test_neutral_levers_are_bit_identical_to_the_reference_search(params):
  """Nothing excluded and alpha = 1 run the catalog-aware path but must change no bit: every
  node dense (width 16) without length normalisation, dense root and sparse nodes (width 2)
  with it (two searches each: one compile per configuration is this test's cost)."""
  for width, length_penalty in ((16, 0.0), (2, 1.0)):
    tables, ranges, order = _catalog(width)
    ref = _search(params, tables, length_penalty=length_penalty)
    probs = np.random.default_rng(1).dirichlet(np.ones(len(ITEMS)), size=len(PROMPTS))
    g = _guide(ranges, order, excluded=[[]] * len(PROMPTS), probs=probs, alpha=1.0)
    out = _search(params, tables, guide=g, length_penalty=length_penalty)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.scores), np.asarray(ref.scores))
    np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))


def test_alpha_zero_scores_are_the_assistant_log_probs(params):
  """alpha = 0, renormalised, length_penalty 0: the per-step shares telescope to log p(title)."""
  tables, ranges, order = _catalog()
  probs = np.random.default_rng(2).dirichlet(np.ones(len(ITEMS)), size=len(PROMPTS))
  out = _search(params, tables, renormalize=True, guide=_guide(ranges, order, probs=probs,
                                                                alpha=0.0))
  for row in range(len(PROMPTS)):
    got = _returned(out, row)
    assert sorted(got) == TITLES
    p_title = {t: sum(p for s, p in zip(ITEMS, probs[row]) if tuple(s) == t) for t in TITLES}
    np.testing.assert_allclose(np.asarray(out.scores[row]), np.log([p_title[t] for t in got]),
                               rtol=1e-6, atol=1e-6)
    assert got[0] == max(p_title, key=p_title.get)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("alpha", [0.25, 2.0])  # 2: contrastive (the llm_prior assistant)
def test_guided_scores_mix_llm_and_assistant_log_probs(params, renormalize, alpha):
  tables, ranges, order = _catalog()
  probs = np.random.default_rng(3).dirichlet(np.ones(len(ITEMS)), size=len(PROMPTS))
  out = _search(params, tables, renormalize=renormalize,
                guide=_guide(ranges, order, probs=probs, alpha=alpha))
  llm = _restricted_logprob if renormalize else _raw_logprob
  for row in range(len(PROMPTS)):
    got = _returned(out, row)
    assert sorted(got) == TITLES
    p_title = {t: sum(p for s, p in zip(ITEMS, probs[row]) if tuple(s) == t) for t in TITLES}
    want = [alpha * llm(params, row, t) + (1 - alpha) * np.log(p_title[t]) for t in got]
    np.testing.assert_allclose(np.asarray(out.scores[row]), want, atol=2e-5)


def test_contrastive_alpha_keeps_massless_titles_out(params):
  """alpha > 1 subtracts log q: a title of zero assistant mass must not gain (1 - alpha) * -inf."""
  tables, ranges, order = _catalog()
  probs = np.random.default_rng(5).dirichlet(np.ones(len(ITEMS)), size=len(PROMPTS))
  probs[:, 2] = 0.0  # item 2's title (3, 7, EOS) has no other item
  out = _search(params, tables, renormalize=True, guide=_guide(ranges, order, probs=probs,
                                                               alpha=3.0))
  for row in range(len(PROMPTS)):
    got = _returned(out, row)
    assert tuple(ITEMS[2]) not in got and len(got) == len(TITLES) - 1
    assert np.all(np.isfinite(np.asarray(out.scores[row])[:len(got)]))


def test_exclusion_never_returns_an_excluded_title(params):
  tables, ranges, order = _catalog()
  # Row 0: only item 0 of the shared title (items 0 and 5) -> the title stays.
  # Row 1: both ids of it, and item 6 -> neither title comes back. Row 2: all but item 2.
  excluded = [[0], [0, 5, 6], [0, 1, 3, 4, 5, 6]]
  out = _search(params, tables, renormalize=True, guide=_guide(ranges, order, excluded))
  for row, ex in enumerate(excluded):
    kept = sorted({tuple(s) for i, s in enumerate(ITEMS) if i not in ex})
    assert sorted(_returned(out, row)) == kept
  # Exclusion also works without renormalisation (raw scores, as the reference search).
  raw = _search(params, tables, guide=_guide(ranges, order, excluded))
  ref = _search(params, tables)
  for row, ex in enumerate(excluded):
    kept = {tuple(s) for i, s in enumerate(ITEMS) if i not in ex}
    assert set(_returned(raw, row)) == kept
    ref_scores = dict(zip(_returned(ref, row), np.asarray(ref.scores[row])))
    for t, s in zip(_returned(raw, row), np.asarray(raw.scores[row])):
      assert s == pytest.approx(ref_scores[t], abs=1e-6)


def test_greedy_takes_the_guided_argmax_step_by_step(params):
  tables, ranges, order = _catalog()
  probs = np.random.default_rng(4).dirichlet(np.ones(len(ITEMS)), size=len(PROMPTS))
  sc = beam_search.SearchConfig(num_beams=1, num_return_sequences=1, max_new_tokens=6,
                                length_penalty=0.0, eos_token_id=EOS, pad_token_id=0,
                                renormalize=True)
  out = beam_search.search(CONFIG, sc, params, PROMPTS, MASKS, tables,
                           guide=_guide(ranges, order, probs=probs, alpha=0.0))
  for row in range(len(PROMPTS)):
    # alpha = 0: greedy follows the assistant's heaviest child at every node.
    prefix = ()
    mass = lambda pre: sum(p for s, p in zip(ITEMS, probs[row]) if tuple(s[:len(pre)]) == pre)
    while not prefix or prefix[-1] != EOS:
      prefix += (max(_children(prefix), key=lambda c: mass(prefix + (c,))),)
    n = int(out.lengths[row, 0])
    assert tuple(int(x) for x in np.asarray(out.tokens[row, 0, :n])) == prefix
    np.testing.assert_allclose(float(out.scores[row, 0]),
                               np.log(mass(prefix) / probs[row].sum()), rtol=1e-6)


def test_levers_need_the_trie(params):
  sc = beam_search.SearchConfig(num_beams=2, num_return_sequences=2, max_new_tokens=3,
                                eos_token_id=EOS, renormalize=True)
  with pytest.raises(ValueError, match="trie"):
    beam_search.search(CONFIG, sc, params, PROMPTS, MASKS)


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               + os.environ.get("XLA_FLAGS", ""))
    import jax, jax.numpy as jnp, numpy as np
    from bigrec_jax import parallel
    from bigrec_jax.generate import beam_search, guide as guide_lib, trie as trie_lib
    from bigrec_jax.model import LlamaConfig, init_params
    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=1)
    items = %r
    params = init_params(cfg, jax.random.key(0))
    params = {**params, "embed": params["embed"] * 4}
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 12, size=(8, 5)).astype(np.int32)
    mask = np.ones_like(ids); mask[3, :2] = 0
    ranges, order = trie_lib.node_ranges(items, 12)
    excluded = [list(rng.choice(len(items), size=r %% 3, replace=False)) for r in range(8)]
    probs = rng.dirichlet(np.ones(len(items)), size=8)
    host = guide_lib.row_prefixes(order, len(items), excluded, probs)
    sc = beam_search.SearchConfig(num_beams=3, num_return_sequences=3, max_new_tokens=6,
                                  eos_token_id=1, renormalize=True, length_penalty=0.0)
    def run(tables, rngs, arrays, ids, mask, params):
      g = guide_lib.CatalogGuide(rngs, **arrays, guidance=jnp.float32(0.5))
      return beam_search.search(cfg, sc, params, ids, mask, tables, guide=g)
    tables = trie_lib.build_tables(items, 12, 2)
    ref = run(trie_lib.to_device(tables), trie_lib.NodeRanges(*map(jnp.asarray, ranges)),
              {k: jnp.asarray(v) for k, v in host.items()}, ids, mask, params)
    mesh = parallel.make_mesh((-1, 1, 1))
    rep = parallel.replicated(mesh)
    batch = parallel.global_batch_from_local({"ids": ids, "mask": mask, **host}, mesh)
    out = run(trie_lib.to_device(tables, rep),
              trie_lib.NodeRanges(*(jax.device_put(a, rep) for a in ranges)),
              {k: batch[k] for k in host}, batch["ids"], batch["mask"],
              jax.device_put(params, rep))
    assert len(out.tokens.sharding.device_set) == 8
    assert len(batch["mass_prefix"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
    np.testing.assert_allclose(np.asarray(out.scores), np.asarray(ref.scores), atol=1e-5)
    print("SHARDED_OK")
""") % (ITEMS,)


def test_guided_search_sharded_over_eight_devices_matches_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=300)
  assert "SHARDED_OK" in res.stdout, res.stderr[-3000:]
