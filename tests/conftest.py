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
  """A few real BIGRec-style prompts (movie domain)."""
  instruction = ("Given a list of movies the user has watched before, please recommend a new "
                 "movie that the user likes to the user.")
  histories = [["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"],
               ["Star Wars", "Fargo", "Contact"],
               ["Scream", "Liar Liar", "Air Force One", "Titanic", "Evita", "Jackie Brown"],
               ["Twelve Monkeys"]]
  out = []
  for h in histories:
    inp = "The user has watched the following movies before:" + ", ".join(
        f'"{t}"' for t in h) + "\n "
    out.append("Below is an instruction that describes a task, paired with an input that provides "
               "further context. Write a response that appropriately completes the request. \n\n"
               f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n")
  return out
