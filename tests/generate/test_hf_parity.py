"""Our generation vs transformers' `generate` on the real SmolLM2 and real ML-100K prompts."""
from __future__ import annotations

import contextlib

import numpy as np

from bigrec_jax.data import prompts
from bigrec_jax.data.tokenize import Tokenized, shared_prefix_length
from bigrec_jax.generate import GenerateOptions, Generator, beam_search


@contextlib.contextmanager
def _torch_threads(n: int):
  """One torch thread: on a shared 2-core machine it is ~2x faster than two contending ones."""
  import torch
  before = torch.get_num_threads()
  torch.set_num_threads(n)
  try:
    yield
  finally:
    torch.set_num_threads(before)


def _hf_generate(hf_model, enc, **kw):
  import torch
  with _torch_threads(1), torch.no_grad():
    return hf_model.generate(input_ids=torch.tensor(enc["input_ids"]),
                             attention_mask=torch.tensor(enc["attention_mask"]), do_sample=False,
                             pad_token_id=0, eos_token_id=2, return_dict_in_generate=True,
                             output_scores=True, **kw)


def test_greedy_equals_transformers_token_for_token(smollm2, hf_smollm2, real_rows):
  texts = [prompts.prompt_for(r) for r in real_rows[:4]]
  enc = smollm2.tokenizer(texts, return_tensors="np", padding=True)
  new = 16
  ref = _hf_generate(hf_smollm2, enc, num_beams=1, max_new_tokens=new)
  ref_tokens = ref.sequences[:, enc["input_ids"].shape[1]:].numpy()
  sc = beam_search.SearchConfig(num_beams=1, num_return_sequences=1, max_new_tokens=new,
                                eos_token_id=2, pad_token_id=0)
  ids, mask = enc["input_ids"], enc["attention_mask"]
  prefix_len = shared_prefix_length(Tokenized.from_lists(
      [ids[r][mask[r] == 1] for r in range(len(ids))], [[0]] * len(ids)))
  assert prefix_len > 40  # the instruction every prompt opens with
  for shared in (0, prefix_len):  # the prompts' shared instruction prefilled per row / once
    out = beam_search.search(smollm2.config, sc, smollm2.params, ids, mask, prefix_len=shared)
    ours = np.asarray(out.tokens)[:, 0, :ref_tokens.shape[1]]
    np.testing.assert_array_equal(ours, ref_tokens)


def test_beam_search_agrees_with_transformers_on_eight_prompts(smollm2, hf_smollm2, real_rows):
  new, beams = 10, 4
  texts = [prompts.prompt_for(r) for r in real_rows]
  enc = smollm2.tokenizer(texts, return_tensors="np", padding=True)
  ref = _hf_generate(hf_smollm2, enc, num_beams=beams, num_return_sequences=beams,
                     max_new_tokens=new)
  decoded = smollm2.tokenizer.batch_decode(ref.sequences, skip_special_tokens=True)
  ref_predict = [[d.split("Response:\n")[-1] for d in decoded[i * beams:(i + 1) * beams]]
                 for i in range(len(texts))]
  ref_scores = ref.sequences_scores.numpy().reshape(len(texts), beams)

  # Through the runner: bucketed padding (not HF's batch padding), decoding and splitting.
  generator = Generator(smollm2, GenerateOptions(num_beams=beams, num_return_sequences=beams,
                                                 max_new_tokens=new, batch_size=8,
                                                 progress=False))
  rows = generator.generate_rows(real_rows)
  same_top = sum(r["predict"][0] == p[0] for r, p in zip(rows, ref_predict))
  same_set = sum(set(r["predict"]) == set(p) for r, p in zip(rows, ref_predict))
  print(f"HF agreement: top-1 {same_top}/8, same set of {beams} {same_set}/8")
  assert same_top >= 7
  assert same_set >= 5
  for row, want, want_scores in zip(rows, ref_predict, ref_scores):
    assert row["predict_scores"] == sorted(row["predict_scores"], reverse=True)
    if row["predict"] == want:
      np.testing.assert_allclose(row["predict_scores"], want_scores, atol=2e-3)
