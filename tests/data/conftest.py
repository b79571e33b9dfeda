"""Fixtures of the data tests: the SmolLM2 tokenizer (loaded once) and toy raw files."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  """The HF tokenizer of the embedded SmolLM2 GGUF (takes a few seconds, so once per session)."""
  from transformers import AutoTokenizer

  from bigrec_jax import assets

  gguf = assets.smollm2_gguf()
  return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


class CharTokenizer:
  """A stand-in tokenizer for fast batching tests: one token per character, EOS id 2."""
  eos_token_id = 2

  def __call__(self, texts, truncation=False, max_length=None, padding=False):
    ids = [[3 + ord(c) % 97 for c in t] for t in texts]
    if truncation and max_length is not None:
      ids = [s[:max_length] for s in ids]
    return {"input_ids": ids}


@pytest.fixture
def char_tokenizer():
  return CharTokenizer()


# The toy MovieLens log of test_data_sequences.py, in ratings.dat / movies.dat form. File order is
# deliberately not time order; user 2 has two ratings at the same time (file order breaks ties).
TOY_MOVIES = ["1::Alpha (1990)::Drama", "2::Beta, The (1991)::Comedy", "3::Gamma (1992)::Drama",
              "4::Delta (1993)::Action", "5::Epsilon (1994)::Drama"]
TOY_RATINGS = ["2::3::4::105", "1::2::4::110", "1::1::5::100", "3::2::5::101", "2::1::5::115",
               "2::5::3::115", "1::3::2::120", "2::2::5::125", "1::4::5::130", "1::5::4::140",
               "4::4::1::150", "4::1::2::145"]


@pytest.fixture
def toy_dat(tmp_path):
  """(ratings.dat, movies.dat) of the toy log."""
  ratings, movies = tmp_path / "ratings.dat", tmp_path / "movies.dat"
  ratings.write_text("\n".join(TOY_RATINGS) + "\n", encoding="ISO-8859-1")
  movies.write_text("\n".join(TOY_MOVIES) + "\n", encoding="ISO-8859-1")
  return str(ratings), str(movies)
