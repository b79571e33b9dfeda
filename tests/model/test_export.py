"""HF checkpoint export (the output of full fine-tuning): transformers and load_model read it."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

from bigrec_jax.model import LlamaConfig, export, forward, load_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "train"))
from train_tiny import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def perturbed(smollm2):
  """SmolLM2 with every weight moved (as fine-tuning would), so nothing matches by accident."""
  keys = iter(jax.random.split(jax.random.key(0), 64))
  return jax.tree.map(lambda x: x + 0.01 * jax.random.normal(next(keys), x.shape, x.dtype),
                      smollm2.params)


def test_real_smollm2_export_loads_in_transformers_and_load_model_with_the_same_logits(
    smollm2, perturbed, bigrec_prompts, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  out = str(tmp_path / "model")
  export.save_pretrained(out, perturbed, smollm2.config, smollm2.tokenizer)
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))

  enc = smollm2.tokenizer(bigrec_prompts[:2], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  ours, _ = jax.jit(lambda p: forward(smollm2.config, p, ids, mask))(perturbed)
  ours = np.asarray(ours)
  real = mask.astype(bool)

  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  hf.eval()
  assert hf.config.tie_word_embeddings and hf.lm_head.weight is hf.model.embed_tokens.weight
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours[real], theirs[real], atol=2e-3, rtol=1e-4)
  assert AutoTokenizer.from_pretrained(out)("Toy Story")["input_ids"] == \
      smollm2.tokenizer("Toy Story")["input_ids"]

  again = load_model(out)
  assert again.config == smollm2.config
  for a, b in zip(jax.tree.leaves(perturbed), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # float32 written as is


def test_untied_head_biases_and_rope_scaling_round_trip(smollm2, tmp_path):
  """An untied lm_head, Qwen2-style q/k/v biases and llama3 rope scaling survive the export."""
  scaling = (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
             ("original_max_position_embeddings", 64), ("rope_type", "llama3"))
  # SmolLM2's vocabulary size, so that its tokenizer (saved beside) is a valid one for it.
  model = tiny_model(seed=2, vocab_size=49152, tie_word_embeddings=False, attention_bias=True,
                     rope_scaling=scaling, architecture="qwen2")
  assert "bias" in model.params["layers"]["q_proj"] and "lm_head" in model.params
  out = str(tmp_path / "tiny")
  export.save_pretrained(out, model.params, model.config, smollm2.tokenizer)
  with open(os.path.join(out, "config.json")) as f:
    hf = json.load(f)
  assert hf["architectures"] == ["Qwen2ForCausalLM"]
  assert LlamaConfig.from_hf(hf) == model.config
  again = load_model(out)
  assert jax.tree.structure(again.params) == jax.tree.structure(model.params)
  for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
