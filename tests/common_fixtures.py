"""Builders shared by the test directories (importable from any test: tests/ is on sys.path).

- `save_tiny_hf`: a tiny random transformers checkpoint (optionally with the SmolLM2 tokenizer),
  the one way the tests make an HF directory for `load_model`;
- `write_prepared_dir`: a prepared-data directory written by the data stage's own writer
  (`bigrec_jax.data.prepare.write`) and read back through `bigrec_jax.data.prepared`, so every
  synthetic row, catalog and popularity file obeys the contract the stages check.

The numpy grounding reference the ground and evaluate tests compare against is
`ground_reference.py` beside this file.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np


def save_tiny_hf(path, *, seed: int = 0, model_type: str = "llama", tokenizer: bool = True,
                 edit: Callable | None = None, **config):
  """Saves a random `model_type` model (`config`: HF config fields) to `path`; returns it (eval).

  tokenizer: also save the SmolLM2 tokenizer (load_model needs one; it is larger than a tiny
  vocab, hence load_model(..., check_tokenizer_vocab=False) where the tests feed token ids).
  edit: called with the torch model (under no_grad) before it is saved.
  """
  import torch
  from transformers import AutoConfig, AutoModelForCausalLM

  torch.manual_seed(seed)
  model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()
  if edit is not None:
    with torch.no_grad():
      edit(model)
  model.save_pretrained(path)
  if tokenizer:
    from transformers import AutoTokenizer

    from bigrec_jax import assets
    from bigrec_jax.model.loading import _convert_gguf

    AutoTokenizer.from_pretrained(_convert_gguf(assets.smollm2_gguf())).save_pretrained(path)
  return model


def write_prepared_dir(directory: str, titles: Sequence[str],
                       splits: Mapping[str, Sequence[dict]] | None = None,
                       popularity: Sequence[int] | None = None, domain: str = "movie") -> str:
  """A prepared-data directory with this catalog, these row files (stem -> rows; valid/test also
  give valid_5000/test_5000 unless given) and training popularity (default: target counts of
  `splits["train"]`); written by prepare.write, checked by prepared.load_prepared/read_rows."""
  from bigrec_jax.data import prepare, prepared, raw

  rows = {k: list(v) for k, v in (splits or {}).items()}
  for split in ("valid", "test"):
    if split in rows:
      rows.setdefault(f"{split}_5000", rows[split])
  if popularity is None:
    popularity = np.bincount([r["target_item_id"] for r in rows.get("train", ())],
                             minlength=len(titles))
  popularity = [int(c) for c in popularity]
  empty = np.zeros(0, np.int64)
  log = raw.RawLog(name="synthetic", item_raw_ids=[str(i) for i in range(len(titles))],
                   titles=list(titles), user_ids=[], item_index=empty,
                   ratings=empty.astype(np.float64), timestamps=empty, sources={})
  stats = {"format_version": prepare.FORMAT_VERSION, "dataset": "synthetic", "domain": domain,
           "items": len(titles), "examples": {k: len(v) for k, v in rows.items()}}
  prepare.write(directory, prepare.Built(log, rows, popularity, stats))
  loaded = prepared.load_prepared(directory)
  assert loaded.titles == list(titles) and loaded.popularity.tolist() == popularity
  for stem in rows:
    loaded.rows(stem)  # every row passes the prepared-data checks
  return directory
