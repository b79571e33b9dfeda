"""Text embeddings for grounding: the base model's last hidden state at a text's last token.

REFERENCE.md "Step 2": the embedding of a text is what HF returns as `hidden_states[-1][:, -1]` from
the BASE model (no LoRA) with left padding, i.e. the hidden state after the final RMSNorm at the
last real token. Texts are tokenized as the tokenizer does by default (special tokens included),
sorted by length and cut into batches whose padded length is rounded up to a bucket
(`bucket_length`), so jit compiles one shape per bucket; rows are padded to a fixed batch size
for the same reason.
Padding and positions follow the attention mask, so a row's embedding does not depend on what it
is batched with (up to float rounding). Batches are fetched one step behind: batch i + 1 is
dispatched before batch i's embeddings are copied to the host, so the host's copying and
padding overlap the device's work.

The catalog's embeddings are cached on disk under a key of the model (path, size, mtime, dtype)
and the exact titles, so re-evaluating a run does not embed the catalog again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Sequence

import jax
import numpy as np

from bigrec_jax import files, parallel
from bigrec_jax.model import LoadedModel, last_hidden_state

EMBEDDING_VERSION = 1  # bump when what an embedding means changes (invalidates caches)
SMALLEST_BUCKET = 4  # padded lengths: 4, 6, 8, 12, 16, ... (bucket_length)


@functools.partial(jax.jit, static_argnums=0)
def _last_hidden(config, params, ids, mask):
  return last_hidden_state(config, params, ids, mask)


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
  """Token ids per text (tokenizer defaults, e.g. BOS for LLaMA); the first max_tokens kept."""
  if not texts:
    return []
  enc = tokenizer(list(texts), padding=False, truncation=True, max_length=max_tokens)
  return [list(ids) for ids in enc["input_ids"]]


def bucket_length(n: int, smallest: int = SMALLEST_BUCKET) -> int:
  """The padded length of a batch whose longest text has n tokens: the first of smallest, 1.5x,
  2x, 3x, 4x, 6x, ... (4, 6, 8, 12, 16, 24, 32, ...) that holds n.

  Catalog titles average ~5 SmolLM2 tokens (ML-100K: 1 to 24), so a fixed multiple pads them
  heavily (a multiple of 16: 3.4x the real tokens). This ladder pads a batch's longest text less
  than 1.5x once it has `smallest` tokens, and compiles about 2 log2(longest / smallest) shapes
  whatever the texts' lengths.
  """
  if smallest < 1:
    raise ValueError(f"smallest bucket must be >= 1, got {smallest}")
  size = smallest
  while True:
    if n <= size:
      return size
    if n <= size * 3 // 2:
      return size * 3 // 2
    size *= 2


def plan_batches(lengths: Sequence[int], batch_size: int, smallest_bucket: int = SMALLEST_BUCKET
                 ) -> list[tuple[list[int], int]]:
  """(text indices, padded length) per batch: non-empty texts sorted by length, batch_size each
  (the last batch is padded with filler rows up to batch_size)."""
  order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: lengths[i])
  return [(rows, bucket_length(lengths[rows[-1]], smallest_bucket))
          for rows in (order[s:s + batch_size] for s in range(0, len(order), batch_size))]


def embed_texts(model: LoadedModel, texts: Sequence[str], *, batch_size: int = 64,
                smallest_bucket: int = SMALLEST_BUCKET, max_tokens: int = 512, mesh=None,
                desc: str = "embedding", progress: bool = True) -> np.ndarray:
  """[len(texts), hidden] float32 embeddings; texts with no tokens (empty) get zero vectors."""
  from tqdm.auto import tqdm

  pad_id = model.config.pad_token_id
  ids = tokenize(model.tokenizer, texts, max_tokens)
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  if mesh is not None:  # the batch dimension must divide over the data-parallel devices
    dp = parallel.data_parallel_size(mesh)
    batch_size = -(-batch_size // dp) * dp
  batches = plan_batches([len(x) for x in ids], batch_size, smallest_bucket)
  pending = None  # (rows, device result) of the previous batch, fetched once the next is queued
  for rows, length in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches):
    tok = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for r, i in enumerate(rows):  # left padding: the last real token sits at position -1
      tok[r, length - len(ids[i]):] = ids[i]
      mask[r, length - len(ids[i]):] = 1
    mask[len(rows):, -1] = 1  # padding rows get one (pad) token so no row is fully masked
    if mesh is not None:
      tok, mask = (jax.device_put(x, parallel.batch_sharding(mesh)) for x in (tok, mask))
    hidden = _last_hidden(model.config, model.params, tok, mask)
    if pending is not None:
      _store(out, *pending)
    pending = (rows, hidden)
  if pending is not None:
    _store(out, *pending)
  return out


def _store(out: np.ndarray, rows: list[int], hidden) -> None:
  out[rows] = np.asarray(jax.device_get(hidden))[:len(rows)]


def model_fingerprint(model: LoadedModel) -> str:
  """Identifies the weights cheaply: source path, size and mtime of its files, dtypes, config."""
  src = files.abspath(model.source)
  paths = [src] if files.isfile(src) else sorted(
      os.path.join(src, f) for f in files.listdir(src)
      if f.endswith((".safetensors", ".json", ".gguf"))) if files.isdir(src) else []
  stats = [(p, *files.size_and_mtime(p)) for p in paths]
  blob = json.dumps([src, stats, repr(model.config), EMBEDDING_VERSION], default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def catalog_key(model: LoadedModel, titles: Sequence[str]) -> str:
  h = hashlib.sha256(model_fingerprint(model).encode())
  for t in titles:
    h.update(t.encode("utf-8") + b"\0")
  return h.hexdigest()[:24]


def catalog_embeddings(model: LoadedModel, titles: Sequence[str], cache_dir: str | None, *,
                       log=print, **embed_kw) -> np.ndarray:
  """Embeddings of the (already cleaned) catalog titles, read from or written to the cache."""
  path = None
  if cache_dir:
    path = os.path.join(cache_dir, f"catalog_embeddings.{catalog_key(model, titles)}.npy")
    if files.exists(path):
      cached = files.read_npy(path, ndim=2)
      if cached.shape == (len(titles), model.config.hidden_size):
        log(f"[embed] catalog embeddings from cache {path}")
        return cached.astype(np.float32)
      log(f"[embed] ignoring {path}: shape {cached.shape} does not fit this catalog")
  emb = embed_texts(model, titles, desc="embedding catalog", **embed_kw)
  if path:
    files.write_npy(path, emb)
    log(f"[embed] catalog embeddings cached in {path}")
  return emb
