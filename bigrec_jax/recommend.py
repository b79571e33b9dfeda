"""Everyday use: titles a user liked -> generated title -> top-K real catalog items.

The same two steps as the offline evaluation, for one user: the adapter writes a title with beam
search, the base model embeds it, and the grounding kernel ranks the whole catalog by L2
distance, optionally reweighted by popularity. Items already in the history are left out.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np

from bigrec_jax import assets
from bigrec_jax.data import prompts
from bigrec_jax.data.prepared import load_prepared
from bigrec_jax.files import UserError


@dataclasses.dataclass
class Recommendation:
  generated: list[str]  # the beams' texts, best first
  items: list[tuple[int, str, float]]  # (item_id, title, score; lower = closer)
  unknown_history: list[str]  # liked titles not found in the catalog (still used in the prompt)


def recommend(liked: Sequence[str], data_dir: str, adapter: str | None, *,
              model_path: str | None = None, k: int = 10, gamma_pop: float = 0.0,
              num_beams: int = 4, max_new_tokens: int = 32, constrained: bool = False,
              exclude_history: bool = True) -> Recommendation:
  liked = [prompts.unquote(t) for t in liked if prompts.unquote(t)]
  if not liked:
    raise UserError("--liked: give at least one item title")
  from bigrec_jax.generate import runner
  from bigrec_jax.ground import embed, kernel, signals
  from bigrec_jax.model import lora

  data = load_prepared(data_dir)
  titles = data.titles
  if not 1 <= k <= len(titles):
    raise UserError(f"--k={k}: must be between 1 and the catalog size {len(titles)}")
  by_title = {t.lower(): i for i, t in enumerate(titles)}
  history_ids = [by_title[t.lower()] for t in liked if t.lower() in by_title]
  unknown = [t for t in liked if t.lower() not in by_title]
  row = prompts.make_fields(data.domain, liked[-10:], "")

  model = runner.load_merged_model(model_path, adapter)
  options = runner.GenerateOptions(num_beams=num_beams, num_return_sequences=num_beams,
                                   max_new_tokens=max_new_tokens, batch_size=1,
                                   constrained=constrained, progress=False)
  generator = runner.Generator(model, options, titles=titles if constrained else None)
  generated = generator.generate_rows([row], "liked titles")[0]["predict"]
  if adapter:  # back to the base model for embeddings (BIGRec grounds with the base model)
    adapter_tree, lora_config = lora.import_peft(runner.resolve_adapter(adapter), model.config)
    model.params = jax.jit(lora.unmerge, static_argnums=2)(model.params, adapter_tree,
                                                           lora_config)
  table = embed.catalog_embeddings(model, titles, os.path.join(assets.home(), "embeddings"),
                                   progress=False, log=lambda _: None)
  query = embed.embed_texts(model, [prompts.unquote(generated[0])], progress=False)
  items = kernel.place_items(table, signals.popularity_weights(np.asarray(data.popularity)))
  extra = len(history_ids) if exclude_history else 0
  out = kernel.ground(query, items, k=min(k + extra, len(titles)), gamma_pop=gamma_pop)
  chosen = []
  for i, s in zip(out.top_ids[0], out.top_scores[0]):
    if exclude_history and int(i) in history_ids:
      continue
    chosen.append((int(i), titles[int(i)], float(s)))
  return Recommendation(generated, chosen[:k], unknown)
