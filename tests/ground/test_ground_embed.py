"""Grounding embeddings of the real SmolLM2 against transformers' hidden_states[-1][:, -1]."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.ground import embed

TEXTS = ["Toy Story", "Star Wars", "Twelve Monkeys", "Usual Suspects, The",
         "Wallace & Gromit: The Best of Aardman Animation", "Heavy Metal\n(1981) x"]


def test_embeddings_match_transformers_last_hidden_state(smollm2, hf_smollm2):
  import torch
  # batch 4 and buckets from 2: rows are left-padded within a batch, the two batches have
  # different buckets, and the last batch has pad rows
  got = embed.embed_texts(smollm2, TEXTS, batch_size=4, smallest_bucket=2, progress=False)
  assert got.shape == (len(TEXTS), smollm2.config.hidden_size) and got.dtype == np.float32
  for text, row in zip(TEXTS, got):
    ids = smollm2.tokenizer(text)["input_ids"]
    with torch.no_grad():
      out = hf_smollm2(input_ids=torch.tensor([ids]), output_hidden_states=True)
    expect = out.hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(row, expect, atol=1e-3, rtol=1e-3, err_msg=text)


def test_bucket_length_ladder():
  got = [embed.bucket_length(n) for n in range(1, 50)]
  assert sorted(set(got)) == [4, 6, 8, 12, 16, 24, 32, 48, 64]
  for n, b in zip(range(1, 50), got):
    assert b >= n and (n <= 4 or b < 1.5 * n), (n, b)
  assert embed.bucket_length(512) == 512 and embed.bucket_length(5, smallest=2) == 6
  with pytest.raises(ValueError, match="smallest bucket"):
    embed.bucket_length(3, smallest=0)


def test_plan_batches_sorts_by_length_and_skips_empty_texts():
  plan = embed.plan_batches([7, 0, 2, 13, 3], batch_size=2)
  assert plan == [([2, 4], 4), ([0, 3], 16)]


def test_empty_texts_get_zero_vectors_and_catalog_cache_is_reused(smollm2, tmp_path, monkeypatch):
  first = embed.catalog_embeddings(smollm2, ["Fargo", "", "Contact"], str(tmp_path),
                                   batch_size=4, progress=False, log=lambda m: None)
  assert not first[1].any() and first[0].any()
  cached = list(tmp_path.glob("catalog_embeddings.*.npy"))
  assert len(cached) == 1

  def no_embedding(*a, **k):
    raise AssertionError("the cache should have been used")

  monkeypatch.setattr(embed, "embed_texts", no_embedding)
  again = embed.catalog_embeddings(smollm2, ["Fargo", "", "Contact"], str(tmp_path),
                                   log=lambda m: None)
  np.testing.assert_array_equal(again, first)
  assert embed.catalog_key(smollm2, ["Fargo"]) != embed.catalog_key(smollm2, ["Fargo "])
