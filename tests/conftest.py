"""Shared fixtures: the real SmolLM2 (ours and the transformers reference), loaded once."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def smollm2():
  """The embedded SmolLM2-135M-Instruct as a bigrec_jax LoadedModel (float32)."""
  from bigrec_jax.model import load_model

  return load_model()


@pytest.fixture(scope="session")
def hf_smollm2():
  """transformers' LlamaForCausalLM loaded from the same GGUF file (the PyTorch reference)."""
  import torch
  from transformers import AutoModelForCausalLM

  from bigrec_jax import assets

  gguf = assets.smollm2_gguf()
  model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf),
                                               gguf_file=os.path.basename(gguf),
                                               dtype=torch.float32)
  model.eval()
  return model


@pytest.fixture(scope="session")
def bigrec_prompts():
  """A few real BIGRec prompts (movie domain, ML-100K titles), built by the prompt builder."""
  from bigrec_jax.data import prompts

  histories = [["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"],
               ["Star Wars", "Fargo", "Contact"],
               ["Scream", "Liar Liar", "Air Force One", "Titanic", "Evita", "Jackie Brown"],
               ["Twelve Monkeys"]]
  return [prompts.prompt_for(prompts.make_fields("movie", h, "")) for h in histories]
