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
              exclude_history: bool = True, tokenizer: str | None = None,
              renormalize: bool = False, search_exclusion: str = "none",
              assistant: str = "none", guidance: float = 1.0,
              prompt_template: str = "alpaca") -> Recommendation:
  """search_exclusion (none | shown | all_past: both mean the liked titles here) removes the
  liked items from the constrained search's trie; assistant: none | mostpop | llm_prior (a CF
  assistant needs a score row the baselines export for prepared rows only)."""
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
  history_ids, unknown = liked_item_ids(liked, titles)
  row = prompts.make_fields(data.domain, liked[-10:], "")
  if assistant in runner.CF_ASSISTANTS:
    raise UserError(f"--assistant={assistant}: recommending for typed-in titles can be guided by "
                    "mostpop or llm_prior only (a CF model's scores exist for prepared rows: use "
                    "launch/generate.py --assistant_scores)")
  row["history_item_ids"] = history_ids  # every id of a liked title, for the search's exclusion

  model = runner.load_merged_model(model_path, adapter, tokenizer=tokenizer)
  options = runner.GenerateOptions(num_beams=num_beams, num_return_sequences=num_beams,
                                   max_new_tokens=max_new_tokens, batch_size=1,
                                   constrained=constrained, progress=False,
                                   renormalize=renormalize,
                                   exclude_history="shown" if search_exclusion != "none" else "none",
                                   assistant=assistant, guidance=guidance,
                                   prompt_format=prompts.PromptFormat(prompt_template,
                                                                      data.domain))
  generator = runner.Generator(model, options, titles=titles if constrained else None)
  guide = generator.row_guidance([row], "liked titles", data_dir=data_dir)
  generated = generator.generate_rows([row], "liked titles", guide)[0]["predict"]
  if adapter:  # back to the base model for embeddings (BIGRec grounds with the base model)
    kind, trained = runner.resolve_trained(adapter)
    if kind == "lora":
      adapter_tree, lora_config = lora.import_peft(trained, model.config)
      model.params = jax.jit(lora.unmerge, static_argnums=2)(model.params, adapter_tree,
                                                             lora_config)
    else:  # fully fine-tuned weights: nothing to unmerge, the base model is loaded itself
      model.params = runner.load_merged_model(model_path).params
  table = embed.catalog_embeddings(model, titles, os.path.join(assets.home(), "embeddings"),
                                   progress=False, log=lambda _: None)
  query = embed.embed_texts(model, [prompts.unquote(generated[0])], progress=False)
  items = kernel.place_items(table, signals.popularity_weights(np.asarray(data.popularity)))
  excluded = history_ids if exclude_history else []
  # Enough candidates for k distinct titles: every excluded id and every id whose title another
  # id already has can be skipped once.
  shared = len(titles) - len({t.lower() for t in titles})
  out = kernel.ground(query, items, k=min(k + len(excluded) + shared, len(titles)),
                      gamma_pop=gamma_pop)
  chosen = distinct_titles(out.top_ids[0], out.top_scores[0], titles, excluded, k)
  return Recommendation(generated, chosen, unknown)


def liked_item_ids(liked: Sequence[str], titles: Sequence[str]) -> tuple[list[int], list[str]]:
  """Every item id whose title (case-insensitively) is a liked title, and the unknown titles.

  A title several ids share (ML-100K's recbole titles carry no year: 22 are shared) names all
  of them, as evaluation counts shared titles as one item.
  """
  ids_of: dict[str, list[int]] = {}
  for i, t in enumerate(titles):
    ids_of.setdefault(t.lower(), []).append(i)
  ids = sorted({i for t in liked for i in ids_of.get(t.lower(), ())})
  return ids, [t for t in liked if t.lower() not in ids_of]


def distinct_titles(top_ids, top_scores, titles: Sequence[str], excluded: Sequence[int],
                    k: int) -> list[tuple[int, str, float]]:
  """The first k ranked items with a title not excluded and not already shown (best id kept)."""
  skip = set(int(i) for i in excluded)
  seen = {titles[i].lower() for i in skip}
  chosen = []
  for i, s in zip(top_ids, top_scores):
    i = int(i)
    if i in skip or titles[i].lower() in seen:
      continue
    seen.add(titles[i].lower())
    chosen.append((i, titles[i], float(s)))
    if len(chosen) == k:
      break
  return chosen
