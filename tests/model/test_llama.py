"""Parity of the Flax LLaMA with transformers (the PyTorch reference), and the KV cache."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.data.tokenize import Tokenized, shared_prefix_length
from bigrec_jax.model import forward, forward_shared_prefix, init_cache, load_model
from common_fixtures import save_tiny_hf


def _hf_outputs(hf_model, ids, mask):
  import torch
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   output_hidden_states=True)
  return out.logits.numpy(), out.hidden_states[-1].numpy()


def test_smollm2_logits_and_hidden_match_transformers(smollm2, hf_smollm2, bigrec_prompts):
  enc = smollm2.tokenizer(bigrec_prompts[:3], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"], enc["attention_mask"]
  assert (mask[:, 0] == 0).any(), "the batch should exercise left padding"
  logits, _ = forward(smollm2.config, smollm2.params, ids, mask)
  hidden, _ = forward(smollm2.config, smollm2.params, ids, mask, output="hidden")
  ref_logits, ref_hidden = _hf_outputs(hf_smollm2, ids, mask)
  real = mask.astype(bool)
  assert np.abs(np.asarray(logits)[real] - ref_logits[real]).max() <= 1e-3
  assert np.abs(np.asarray(hidden)[real] - ref_hidden[real]).max() <= 1e-3
  # The shared instruction run once for the batch (training and generation do this).
  prefix_len = shared_prefix_length(Tokenized.from_lists(
      [ids[r][mask[r] == 1] for r in range(len(ids))], [[0]] * len(ids)))
  assert prefix_len > 40
  shared = forward_shared_prefix(smollm2.config, smollm2.params, ids, mask, prefix_len)
  assert np.abs(np.asarray(shared)[real] - ref_logits[real]).max() <= 1e-3


def test_bfloat16_matmuls_stay_close_to_transformers(hf_smollm2, bigrec_prompts):
  """matmul_dtype=bfloat16 (float32 activations, bfloat16 weight-matmul operands, the CPU speed
  option): next-token choices equal the float32 reference's, log-probs within 0.5."""
  model = load_model(matmul_dtype="bfloat16")
  assert model.config.projection_dtype == jnp.bfloat16
  enc = model.tokenizer(bigrec_prompts[:3], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"], enc["attention_mask"]
  logits, _ = forward(model.config, model.params, ids, mask)
  ref_logits, _ = _hf_outputs(hf_smollm2, ids, mask)
  real = mask.astype(bool)
  ours, ref = np.asarray(logits)[real], ref_logits[real]
  assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.98
  logp = lambda x: x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) \
      - x.max(-1, keepdims=True)
  assert np.abs(logp(ours) - logp(ref)).max() < 0.5


def test_kv_cache_decoding_matches_full_forward(smollm2, bigrec_prompts):
  cfg, params = smollm2.config, smollm2.params
  enc = smollm2.tokenizer(bigrec_prompts[1:3], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"], enc["attention_mask"]
  # Jitted with the weights as an argument (closed over, they were folded into each program).
  step = jax.jit(lambda p, c, i, m: forward(cfg, p, i, m, cache=c))
  full, _ = step(params, None, ids, mask)
  split = ids.shape[1] - 3
  cache = init_cache(cfg, ids.shape[0], ids.shape[1] + 4)
  prefill, cache = step(params, cache, ids[:, :split], mask[:, :split])
  np.testing.assert_allclose(prefill[:, -1], full[:, split - 1], atol=1e-3)
  for t in range(split, ids.shape[1]):
    out, cache = step(params, cache, ids[:, t:t + 1], mask[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-3)
  assert int(cache["index"]) == ids.shape[1]


TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_tiny_hf_checkpoints_match_transformers(tmp_path, kind):
  import torch
  if kind == "llama3":
    hf_cfg = dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=False,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                  **TINY)
  else:
    hf_cfg = dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True, **TINY)
  hf_model = save_tiny_hf(tmp_path, **hf_cfg)
  ours = load_model(str(tmp_path), check_tokenizer_vocab=False)
  if kind == "qwen2":
    assert ours.config.attention_bias and "bias" in ours.params["layers"]["q_proj"]
    # Random init leaves biases at zero: make them matter.
    with torch.no_grad():
      for layer in hf_model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
          proj.bias.normal_()
    hf_model.save_pretrained(tmp_path)
    ours = load_model(str(tmp_path), check_tokenizer_vocab=False)
  else:
    assert ours.config.rope_scaling_dict["rope_type"] == "llama3"
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 320, size=(2, 40)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :7] = 0
  logits, _ = forward(ours.config, ours.params, ids, mask)
  ref, _ = _hf_outputs(hf_model, ids, mask)
  real = mask.astype(bool)
  assert np.abs(np.asarray(logits)[real] - ref[real]).max() <= 1e-4


def test_bad_checkpoints_give_clear_errors(tmp_path):
  from bigrec_jax.files import UserError

  with pytest.raises(UserError, match="not found"):
    load_model(str(tmp_path / "nope.gguf"))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
  with pytest.raises(UserError, match="config.json"):
    load_model(str(tmp_path))
