"""Beam search on tiny models: the decode step, brute force, HF semantics, sharding.

(Compiles per bucket are counted in test_runner.py.)
"""
from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.generate import beam_search, decoder
from bigrec_jax.model import LlamaConfig, forward, init_params
from common_fixtures import save_tiny_hf

TINY = LlamaConfig(vocab_size=5, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, eos_token_id=1, pad_token_id=0, bos_token_id=None)


def _tiny_params(config: LlamaConfig, seed: int = 0, logit_scale: float = 40.0):
  """Random weights with peaky next-token distributions (so the best sequence is unambiguous)."""
  params = init_params(config, jax.random.key(seed))
  return {**params, "embed": params["embed"] * logit_scale}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _seq_log_probs(config, params, ids, prompt_len: int):
  logits, _ = forward(config, params, ids, jnp.ones_like(ids))
  logp = jax.nn.log_softmax(logits[:, prompt_len - 1:-1], axis=-1)
  return jnp.take_along_axis(logp, ids[:, prompt_len:, None], axis=-1)[..., 0]


def _log_probs(config, params, prompt: np.ndarray, seqs: np.ndarray) -> np.ndarray:
  """[S, T] log p(seq_t | prompt, seq_<t) by full forward passes (no cache, no search).
  One jitted program per shape, the weights an argument (a new jit per call, closing over
  them, compiled again every time)."""
  ids = np.concatenate([np.repeat(prompt[None], len(seqs), 0), seqs], axis=1)
  return np.asarray(_seq_log_probs(config, params, jnp.asarray(ids), len(prompt)))


def test_decode_step_matches_full_forward_with_reordered_beams():
  config = TINY.replace(vocab_size=40)
  params = _tiny_params(config, logit_scale=1.0)
  rng = np.random.default_rng(0)
  b, k, t_max = 2, 3, 4
  ids = rng.integers(2, 40, size=(b, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  _, prompt = jax.jit(lambda i, m: decoder.prefill(config, params, i, m))(ids, mask)
  gen = decoder.init_gen_cache(config, b * k, t_max)
  step_fn = jax.jit(lambda *a: decoder.decode_step(config, params, prompt, *a))
  own = np.arange(b * k)
  ancestors = np.repeat(own[:, None], t_max, 1)
  paths = np.zeros((b * k, 0), np.int32)
  got, prefixes = [], []
  for step in range(t_max):
    # Random reordering within each row (as beam selection does), then one token per beam.
    src = np.concatenate([r * k + rng.integers(0, k, k) for r in range(b)])
    ancestors = ancestors[src]
    ancestors[:, step] = own
    tokens = rng.integers(2, 40, size=b * k).astype(np.int32)
    paths = np.concatenate([paths[src], tokens[:, None]], axis=1)
    logits, gen = step_fn(gen, jnp.asarray(ancestors), jnp.asarray(tokens), jnp.int32(step))
    got.append(np.asarray(logits))
    prefixes.append(np.pad(paths, ((0, 0), (0, t_max - step - 1)), constant_values=2))
  # Reference: one causal forward over every (step, beam) path; right filler cannot leak back.
  per_step = lambda a: np.tile(np.repeat(a, k, 0), (t_max, 1))  # [t_max * N, ...]
  full = np.concatenate([per_step(ids), np.concatenate(prefixes)], axis=1)
  full_mask = np.concatenate([per_step(mask), np.ones((t_max * b * k, t_max), np.int32)], axis=1)
  ref, _ = jax.jit(lambda i, m: forward(config, params, i, m))(full, full_mask)
  ref = np.asarray(ref).reshape(t_max, b * k, full.shape[1], -1)
  for step in range(t_max):
    np.testing.assert_allclose(got[step], ref[step, :, ids.shape[1] + step], atol=2e-4, rtol=1e-4)


def test_brute_force_beam_width_vocab_pow_steps_finds_the_best_sequences():
  """With num_beams = vocab ** steps nothing is pruned: the result is the exact optimum."""
  config, steps = TINY, 3
  vocab, eos = config.vocab_size, config.eos_token_id
  params = _tiny_params(config, seed=1)
  prompts = np.array([[2, 3, 4, 2], [0, 0, 4, 3]], np.int32)
  masks = np.array([[1, 1, 1, 1], [0, 0, 1, 1]], np.int32)
  sc = beam_search.SearchConfig(num_beams=vocab ** steps, num_return_sequences=20,
                                max_new_tokens=steps, eos_token_id=eos, pad_token_id=0)
  out = beam_search.search(config, sc, params, prompts, masks)
  all_seqs = np.array(list(itertools.product(range(vocab), repeat=steps)), np.int32)
  for row in range(2):
    prompt = prompts[row][masks[row] == 1]
    logp = _log_probs(config, params, prompt, all_seqs)
    hyps = {}
    for seq, lp in zip(all_seqs, logp):
      # A hypothesis ends at its first EOS or at max length; score = sum log p / length.
      n = next((t + 1 for t in range(steps) if seq[t] == eos), steps)
      hyps[tuple(seq[:n])] = lp[:n].sum() / n
    best = sorted(hyps.items(), key=lambda kv: -kv[1])[:20]
    got = [tuple(int(x) for x in t[:n]) for t, n in zip(np.asarray(out.tokens[row]),
                                                         np.asarray(out.lengths[row]))]
    assert got == [seq for seq, _ in best]
    np.testing.assert_allclose(np.asarray(out.scores[row]), [s for _, s in best], atol=1e-5)
    assert (np.asarray(out.tokens[row])[np.asarray(out.lengths[row]) < steps, -1] == 0).all()


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
def test_decode_layouts_give_the_same_search(kernels):
  """Projection kernels cast to bfloat16 at every step or once before the search; on the cpu
  kernels path stored as their uint16 bits (ops.PackedHalf, which XLA:CPU does not widen to
  float32 in the decode loop), on the xla path as bfloat16: one result, on either path."""
  from bigrec_jax.model import ops

  config = TINY.replace(matmul_dtype="bfloat16", kernels=kernels)
  params = _tiny_params(config, seed=2)
  packed = decoder.cast_projections(config, params)
  kernels_of = [sub["kernel"] for sub in packed["layers"].values() if "kernel" in sub]
  if kernels == "cpu":
    assert all(isinstance(k, ops.PackedHalf) and k.bits.dtype == np.uint16 for k in kernels_of)
  else:
    assert {k.dtype for k in kernels_of} == {jnp.dtype(jnp.bfloat16)}
  prompts = np.array([[2, 3, 4, 2, 5], [0, 0, 4, 3, 6]], np.int32)
  masks = (prompts > 0).astype(np.int32)
  sc = beam_search.SearchConfig(num_beams=3, num_return_sequences=3, max_new_tokens=5,
                                eos_token_id=config.eos_token_id, pad_token_id=0)
  reference = beam_search.search(TINY.replace(matmul_dtype="bfloat16", kernels="cpu"), sc, params,
                                 prompts, masks)
  for p in (params, packed):
    out = beam_search.search(config, sc, p, prompts, masks)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(reference.tokens))
    np.testing.assert_allclose(np.asarray(out.scores), np.asarray(reference.scores), atol=1e-4)


def _tiny_hf(tmp_path, seed: int):
  """A tiny transformers Llama whose EOS is likely, saved and loaded as our model."""
  import torch
  from bigrec_jax.model import load_model

  def eos_competes(hf):
    hf.lm_head.weight.mul_(60.0)
    # Point EOS's output row along the typical final hidden state, so EOS competes.
    probe = hf.model(input_ids=torch.randint(3, 64, (4, 8))).last_hidden_state.reshape(-1, 32)
    direction = probe.mean(0) / probe.mean(0).norm()
    hf.lm_head.weight[2] = 2.0 * direction * hf.lm_head.weight[3:].norm(dim=1).mean()

  hf = save_tiny_hf(tmp_path, seed=seed, edit=eos_competes, vocab_size=64, hidden_size=32,
                    intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
  return hf, load_model(str(tmp_path), check_tokenizer_vocab=False)  # ids, not text


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping",
                         [(3, 1.0, False), (4, 0.5, True)])
def test_beam_search_matches_transformers_on_a_tiny_model(tmp_path, num_beams, length_penalty,
                                                          early_stopping):
  import torch
  hf, ours = _tiny_hf(tmp_path, seed=num_beams)
  rng = np.random.default_rng(num_beams)
  ids = rng.integers(3, 64, size=(3, 7)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  ids[1, :3] = 0
  new = 10
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=new,
                      do_sample=False, length_penalty=length_penalty,
                      early_stopping=early_stopping, pad_token_id=0, eos_token_id=2,
                      return_dict_in_generate=True, output_scores=True)
  sc = beam_search.SearchConfig(num_beams=num_beams, num_return_sequences=num_beams,
                                max_new_tokens=new, length_penalty=length_penalty,
                                early_stopping=early_stopping, eos_token_id=2, pad_token_id=0)
  out = beam_search.search(ours.config, sc, ours.params, ids.astype(np.int32),
                           mask.astype(np.int32))
  ref_tokens = ref.sequences[:, ids.shape[1]:].numpy().reshape(3, num_beams, -1)
  ref_scores = ref.sequences_scores.numpy().reshape(3, num_beams)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  saw_eos, saw_full = False, False
  for row in range(3):
    for r in range(num_beams):
      n = lengths[row, r]
      ref_seq = [t for t in ref_tokens[row, r]]
      ref_n = next((i + 1 for i, t in enumerate(ref_seq) if t == 2), len(ref_seq))
      saw_eos |= n < new
      saw_full |= n == new
      assert list(tokens[row, r, :n]) == ref_seq[:ref_n], (row, r)
  np.testing.assert_allclose(np.asarray(out.scores), ref_scores, atol=1e-4)
  assert saw_eos and saw_full, "the test model should end hypotheses both ways"


def test_one_program_serves_every_length_penalty_each_equal_to_transformers(tmp_path):
  """length_penalty is a traced argument of the search (a decoding grid over it compiles once),
  and each value still gives transformers' beams and scores."""
  import torch
  hf, ours = _tiny_hf(tmp_path, seed=5)
  ids = np.random.default_rng(5).integers(3, 64, size=(2, 6)).astype(np.int64)
  before = beam_search.TRACE_COUNTS["search"]
  outputs = []
  for length_penalty in (0.0, 1.0, 2.0):
    with torch.no_grad():
      ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones_like(
          torch.tensor(ids)), num_beams=3, num_return_sequences=3, max_new_tokens=8,
                        do_sample=False, length_penalty=length_penalty, pad_token_id=0,
                        eos_token_id=2, return_dict_in_generate=True, output_scores=True)
    sc = beam_search.SearchConfig(num_beams=3, num_return_sequences=3, max_new_tokens=8,
                                  length_penalty=length_penalty, eos_token_id=2, pad_token_id=0)
    out = beam_search.search(ours.config, sc, ours.params, ids.astype(np.int32),
                             np.ones_like(ids, np.int32))
    np.testing.assert_allclose(np.asarray(out.scores), ref.sequences_scores.numpy().reshape(2, 3),
                               atol=1e-4, err_msg=f"length_penalty {length_penalty}")
    outputs.append(np.asarray(out.scores))
  assert beam_search.TRACE_COUNTS["search"] - before == 1
  assert not np.allclose(outputs[0], outputs[1])  # the penalty does reach the scores


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               + os.environ.get("XLA_FLAGS", ""))
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bigrec_jax import parallel
    from bigrec_jax.generate import beam_search
    from bigrec_jax.model import LlamaConfig, init_params
    cfg = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=1)
    params = init_params(cfg, jax.random.key(0))
    params = {**params, "embed": params["embed"] * 20}
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 24, size=(8, 6)).astype(np.int32)
    mask = np.ones_like(ids); mask[3, :2] = 0
    sc = beam_search.SearchConfig(num_beams=3, num_return_sequences=2, max_new_tokens=5,
                                  eos_token_id=1)
    ref = beam_search.search(cfg, sc, params, ids, mask)
    mesh = parallel.make_mesh((-1, 1, 1))
    batch = parallel.global_batch_from_local({"ids": ids, "mask": mask}, mesh)
    params = jax.device_put(params, parallel.replicated(mesh))
    out = beam_search.search(cfg, sc, params, batch["ids"], batch["mask"])
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.scores), np.asarray(ref.scores), atol=1e-5)
    print("SHARDED_OK")
""")


def test_batch_sharded_over_eight_devices_gives_the_same_result():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=300)
  assert "SHARDED_OK" in res.stdout, res.stderr[-3000:]


def _stop_point(seq, eos: int, quotes: np.ndarray) -> int:
  """Tokens a hypothesis keeps: up to its first EOS or the token bringing its `"` count to 2."""
  count = 0
  for t, tok in enumerate(seq):
    count += int(quotes[tok])
    if tok == eos or count >= 2:
      return t + 1
  return len(seq)


def test_stop_at_closing_quote_brute_force_beam_and_greedy():
  """Quote-stopping is exactly "EOS after the 2nd quote": exhaustive beams find the true best
  hypotheses under that rule, and greedy is the plain greedy path cut at the closing quote."""
  config, steps = TINY, 4
  vocab, eos = config.vocab_size, config.eos_token_id
  params = _tiny_params(config, seed=2, logit_scale=3.0)
  quotes = np.array([0, 0, 1, 0, 2], np.int32)  # token 2 is `"`, token 4 is `""`
  prompts = np.array([[2, 3, 4, 2], [0, 0, 4, 3], [3, 2, 2, 3]], np.int32)
  masks = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
  sc = beam_search.SearchConfig(num_beams=vocab ** steps, num_return_sequences=30,
                                max_new_tokens=steps, eos_token_id=eos, pad_token_id=0,
                                stop_at_closing_quote=True)
  with pytest.raises(ValueError, match="quote_counts"):
    beam_search.search(config, sc, params, prompts, masks)
  out = beam_search.search(config, sc, params, prompts, masks, quote_counts=quotes)
  all_seqs = np.array(list(itertools.product(range(vocab), repeat=steps)), np.int32)
  stopped_by_quote = 0
  for row in range(len(prompts)):
    prompt = prompts[row][masks[row] == 1]
    logp = _log_probs(config, params, prompt, all_seqs)
    hyps = {}
    for seq, lp in zip(all_seqs, logp):
      n = _stop_point(seq, eos, quotes)
      hyps[tuple(seq[:n])] = lp[:n].sum() / n
    best = sorted(hyps.items(), key=lambda kv: -kv[1])[:30]
    got = [tuple(int(x) for x in t[:n]) for t, n in zip(np.asarray(out.tokens[row]),
                                                         np.asarray(out.lengths[row]))]
    assert got == [seq for seq, _ in best]
    np.testing.assert_allclose(np.asarray(out.scores[row]), [s for _, s in best], atol=1e-5)
    stopped_by_quote += sum(len(s) < steps and s[-1] != eos for s in got)
  assert stopped_by_quote > 0, "the test model should end hypotheses at a quote"

  # Greedy: the unstopped greedy path, cut where its quote count reaches 2.
  greedy = dict(num_beams=1, num_return_sequences=1, max_new_tokens=steps, eos_token_id=eos,
                pad_token_id=0)
  free = beam_search.search(config, beam_search.SearchConfig(**greedy), params, prompts, masks)
  stop = beam_search.search(config, beam_search.SearchConfig(**greedy,
                                                             stop_at_closing_quote=True),
                            params, prompts, masks, quote_counts=quotes)
  cut_rows = 0
  for row in range(len(prompts)):
    path = np.asarray(free.tokens[row, 0])
    n = _stop_point(path, eos, quotes)
    assert int(stop.lengths[row, 0]) == n
    np.testing.assert_array_equal(np.asarray(stop.tokens[row, 0]),
                                  np.pad(path[:n], (0, steps - n)))
    lp = _log_probs(config, params, prompts[row][masks[row] == 1], path[None, :n])[0]
    np.testing.assert_allclose(float(stop.scores[row, 0]), lp.sum() / n, atol=1e-5)
    cut_rows += n < int(free.lengths[row, 0])
  assert cut_rows > 0, "some greedy path should go on past its closing quote"
