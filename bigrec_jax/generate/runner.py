"""Generation over a file of rows: the library function behind launch/generate.py.

Rows are in the reference format (JSON list of objects with `instruction` and `input`; any other
field is kept); with `items` (the catalog), a row's prompt is rendered from its
`history_item_ids` and the titles in `options.prompt_format`, so any format serves old prepared
files. Each gets `predict`: num_return_sequences strings, best first, each the decoded
prompt + generation (special tokens skipped) split at the last `Response:\\n`, as the reference
`inference.py` does; and `predict_scores`: the beam scores (summed log-prob / length **
length_penalty; null where constrained decoding found fewer hypotheses).
With `stop_at_closing_quote` (beyond the reference) a hypothesis ends at the closing `"` of its
title and its text is cut right after that quote (a final token like `",` leaves the `,` out).
Catalog-aware decoding (generate/guide.py; constrained only, each off by default): `renormalize`,
`exclude_history` (shown: the row's `history_item_ids`; all_past: every item of the user's
prepared examples before the row's target time) and `assistant` (per-row item probabilities:
popularity shares, the softmax of a baseline's exported score row / temperature, or the model's
own title distribution after a history-free prompt) mixed in with weight 1 - `guidance`.

Prompts are bucketed by token length (multiples of `bucket_multiple`) so jit compiles one program
per bucket; every batch is padded to `batch_size` rows (filler rows are dropped). The batch is
sharded over the mesh's data axes; with several processes each feeds its share of every global
batch and every process receives the whole result (only process 0 writes the file).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from bigrec_jax import files, parallel
from bigrec_jax.data import prompts as prompts_lib
from bigrec_jax.data import titles as titles_lib
from bigrec_jax.data import tokenize as tokenize_lib
from bigrec_jax.files import UserError
from bigrec_jax.generate import beam_search, decoder, guide as guide_lib, prior as prior_lib
from bigrec_jax.generate import trie as trie_lib

log = logging.getLogger(__name__)

EXCLUDE_MODES = ("none", "shown", "all_past")
MAX_CONTRASTIVE_ALPHA = 10.0
# Assistants that read a baseline's exported score matrix (trained by the baselines stage).
CF_ASSISTANTS = ("sasrec", "gru4rec", "caser", "dros")
# llm_prior: the model's own titles without a history (generate/prior.py; contrastive, alpha > 1).
ASSISTANTS = ("none", "mostpop", "llm_prior") + CF_ASSISTANTS


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  num_beams: int = 4
  num_return_sequences: int = 4
  max_new_tokens: int = 128
  batch_size: int = 8  # global rows per batch
  length_penalty: float = 1.0
  early_stopping: bool = False
  constrained: bool = False  # only catalog titles (needs titles)
  stop_at_closing_quote: bool = False  # end a hypothesis at its 2nd `"` like EOS (beyond paper)
  bucket_multiple: int = 32
  share_prompt_prefix: bool = True  # run the instruction all prompts open with once per batch
  max_prompt_len: int = 0  # 0: the model's context minus max_new_tokens
  truncate_long_prompts: bool = False  # drop the oldest tokens with a warning instead of failing
  progress: bool = True
  # data.prompt_template (the one the model was trained with): prompt, trie context, answer split
  prompt_format: prompts_lib.PromptFormat = prompts_lib.PromptFormat()
  # Catalog-aware decoding (generate/guide.py), constrained only; the defaults are the reference.
  renormalize: bool = False  # log-probs renormalised over the allowed trie children
  exclude_history: str = "none"  # none | shown | all_past: items the row's user already had
  assistant: str = "none"  # none | mostpop | llm_prior | sasrec | gru4rec | caser | dros
  guidance: float = 1.0  # alpha: 1 = the LLM alone, 0 = the assistant alone, > 1 (llm_prior) contrastive
  assistant_temperature: float = 1.0  # CF assistants: softmax(scores / temperature)
  # llm_prior: 0 = the model's titles after a history-free prompt; N = their mean over the
  # prompts of N training rows (the model's marginal over real histories)
  prior_rows: int = 0

  @property
  def catalog_aware(self) -> bool:
    return (self.renormalize or self.exclude_history != "none" or self.assistant != "none")


class Generator:
  """A model (LoRA already merged) ready to generate; keeps its compiled programs across calls."""

  def __init__(self, model, options: GenerateOptions, *, titles: Sequence[str] | None = None,
               mesh=None):
    self.model = model
    # Read by every search (prefill and decode): with matmul_dtype, the projection kernels are
    # cast once here instead of inside each compiled search.
    self.params = decoder.cast_projections(model.config, model.params)
    self.options = options
    self.config = model.config
    self.tokenizer = model.tokenizer
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    eos = self.tokenizer.eos_token_id
    if eos is None:
      eos = self.config.eos_token_id
    try:
      self.search_config = beam_search.SearchConfig(
          num_beams=options.num_beams, num_return_sequences=options.num_return_sequences,
          max_new_tokens=options.max_new_tokens, length_penalty=options.length_penalty,
          early_stopping=options.early_stopping, eos_token_id=int(eos),
          pad_token_id=int(self.config.pad_token_id),
          stop_at_closing_quote=options.stop_at_closing_quote, renormalize=options.renormalize)
    except ValueError as e:
      raise UserError(f"generation options: {e}") from None
    multiple = parallel.data_parallel_size(self.mesh) * jax.process_count()
    self.batch_size = -(-options.batch_size // multiple) * multiple
    if self.batch_size != options.batch_size:
      log.warning("batch_size %d rounded up to %d (a multiple of the %d data-parallel replicas)",
                  options.batch_size, self.batch_size, multiple)
    context = self.config.max_position_embeddings - options.max_new_tokens
    self.max_prompt_len = options.max_prompt_len or context
    if self.max_prompt_len < 1:
      raise UserError(f"max_new_tokens {options.max_new_tokens} leaves no room for a prompt in "
                      f"the model's context of {self.config.max_position_embeddings} tokens")
    check_catalog_options(options)
    self.trie = self.ranges = self.catalog_order = None
    self._priors: dict[tuple, np.ndarray] = {}  # catalog_prior's, by prompt set
    self.titles = list(titles) if titles else []
    self.num_items = len(self.titles)
    self.eos_token_id = int(eos)
    if options.constrained:
      if not titles:
        raise UserError("constrained decoding needs the catalog: pass --items (items.tsv)")
      per_row = options.exclude_history != "none" or options.assistant != "none"
      catalog = trie_lib.catalog_trie(
          self.tokenizer, titles, self.config.vocab_size,
          context=options.prompt_format.trie_context(),
          eos_token_id=int(eos), with_ranges=per_row)
      if catalog.longest > options.max_new_tokens:
        log.warning("the longest catalog title takes %d tokens (with quotes and EOS), more than "
                    "max_new_tokens=%d: such titles are cut off", catalog.longest,
                    options.max_new_tokens)
      self.trie = trie_lib.to_device(catalog.tables, parallel.replicated(self.mesh))
      if per_row:
        self.ranges = trie_lib.to_device(catalog.ranges, parallel.replicated(self.mesh))
        self.catalog_order = catalog.order
    self.quote_counts = None
    if options.stop_at_closing_quote:
      self.quote_counts = jax.device_put(
          beam_search.token_quote_counts(self.tokenizer, self.config.vocab_size),
          parallel.replicated(self.mesh))

  # ------------------------------------------------------------------ input checks
  def prompt_ids(self, rows: Sequence[Any], source: str = "rows",
                 titles: Sequence[str] | None = None) -> list[np.ndarray]:
    """Token ids of every row's prompt (rendered from its history_item_ids and `titles` when
    given, else from its text); bad rows raise a UserError naming the row."""
    for i, row in enumerate(rows):
      problem = _row_problem(row, titles)
      if problem:
        raise UserError(f"{source}: row {i}: {problem}")
    data = tokenize_lib.tokenize_prompts(self.tokenizer, list(rows),
                                         template=self.options.prompt_format, titles=titles)
    out = []
    for i in range(len(data)):
      ids, _ = data.example(i)
      if len(ids) > self.max_prompt_len:
        if not self.options.truncate_long_prompts:
          raise UserError(
              f"{source}: row {i}: the prompt has {len(ids)} tokens, more than the "
              f"{self.max_prompt_len} allowed (model context minus max_new_tokens, or "
              "--max_prompt_len); shorten its history or pass --truncate_long_prompts")
        log.warning("%s: row %d: prompt of %d tokens truncated from the left to %d", source, i,
                    len(ids), self.max_prompt_len)
        ids = ids[-self.max_prompt_len:]
      out.append(np.asarray(ids, np.int32))
    return out

  # ------------------------------------------------------------------ generation
  def plan(self, lengths: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """(padded length, row indices with -1 fillers) per global batch, grouped by bucket."""
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
      padded = min(-(-max(n, 1) // self.options.bucket_multiple) * self.options.bucket_multiple,
                   self.max_prompt_len)
      buckets.setdefault(padded, []).append(i)
    plan = []
    for length in sorted(buckets):
      rows = buckets[length]
      for start in range(0, len(rows), self.batch_size):
        chunk = rows[start:start + self.batch_size]
        chunk = chunk + [-1] * (self.batch_size - len(chunk))
        plan.append((length, np.asarray(chunk, np.int64)))
    return plan

  def row_guidance(self, rows: Sequence[dict], source: str = "rows", *,
                   data_dir: str | None = None, assistant_scores: np.ndarray | None = None
                   ) -> RowGuidance | None:
    """The rows' exclusion / assistant inputs for the options (None: no per-row lever).

    data_dir: the prepared directory (all_past reads its splits, mostpop its popularity.json);
    assistant_scores: [rows, num_items] a baseline's exported scores (CF assistants).
    """
    o = self.options
    if self.ranges is None:
      return None
    excluded = history_exclusions(rows, o.exclude_history, data_dir, source)
    if excluded is not None:
      excluded = same_title_ids(excluded, self.titles)
    probs = None
    if o.assistant == "mostpop":
      if data_dir is None:
        raise UserError("--assistant=mostpop needs the prepared data (its popularity.json)")
      from bigrec_jax.data import prepared

      counts = prepared.read_popularity(data_dir, self.num_items)
      probs = guide_lib.popularity_probabilities(counts, len(rows))
    elif o.assistant == "llm_prior":
      probs = np.broadcast_to(self.catalog_prior(self.prior_rows(data_dir)),
                              (len(rows), self.num_items))
    elif o.assistant != "none":
      if assistant_scores is None:
        raise UserError(f"--assistant={o.assistant} needs its exported score matrix "
                        "(--assistant_scores, baselines/<model>/scores_<split>.npy)")
      probs = guide_lib.softmax_probabilities(assistant_scores, o.assistant_temperature)
    guidance = RowGuidance(excluded, probs)
    self._check_something_left(guidance, source)
    return guidance

  def catalog_prior(self, rows: Sequence[dict] | None = None) -> np.ndarray:
    """[num_items] the model's distribution over catalog titles (generate/prior.py; each prompt's
    softmax / assistant_temperature): after a prompt with no history, or (rows) the mean over
    those rows' prompts, the model's marginal over real users. Computed once per prompt set."""
    o = self.options
    if rows is None:
      prompts = [self.tokenizer(o.prompt_format.history_free_prompt())["input_ids"]]
    else:
      prompts = self.prompt_ids(rows, "prior rows", self.titles)
    key = tuple(tuple(int(t) for t in p) for p in prompts)
    if key not in self._priors:
      trie = trie_lib.title_sequences_by_item(
          self.tokenizer, self.titles, o.prompt_format.trie_context(), self.eos_token_id)
      sequences = trie
      if o.stop_at_closing_quote:  # the search ends a title at its closing quote, before EOS
        sequences = [None if s is None else s[:-1] for s in trie]
      per_prompt = [prior_lib.catalog_prior(prior_lib.title_log_likelihoods(
          self.config, self.params, prompt, sequences,
          trie_sequences=trie if o.renormalize else None, batch_size=64,
          sharding=parallel.replicated(self.mesh)), o.assistant_temperature)
          for prompt in prompts]
      self._priors[key] = np.mean(per_prompt, axis=0)
    return self._priors[key]

  def prior_rows(self, data_dir: str | None) -> list[dict] | None:
    """`options.prior_rows` rows spread evenly over the prepared training split (None: 0 rows,
    the history-free prompt)."""
    n = self.options.prior_rows
    if n == 0:
      return None
    if data_dir is None:
      raise UserError("--prior_rows needs the prepared data (its train.json next to --items)")
    from bigrec_jax.data import prepared

    train = prepared.read_rows(os.path.join(data_dir, "train.json"), self.titles)
    return [train[i] for i in np.linspace(0, len(train) - 1, min(n, len(train))).astype(int)]

  def _check_something_left(self, guidance: RowGuidance, source: str) -> None:
    """A row whose every catalog item is excluded would return no beam at all: say so."""
    if guidance.excluded is None:
      return
    pos = guide_lib.item_positions(self.catalog_order, self.num_items)
    for i, ids in enumerate(guidance.excluded):
      p = pos[np.asarray(list(ids), np.int64)] if len(ids) else np.zeros((0,), np.int64)
      if len(np.unique(p[p >= 0])) == len(self.catalog_order):
        raise UserError(f"{source}: row {i}: exclude_history={self.options.exclude_history} "
                        f"excludes every one of the {len(self.catalog_order)} catalog items "
                        "in the trie, so no title can be generated for it")

  def _batch_guide(self, guidance: RowGuidance | None, fill: np.ndarray, alpha: float):
    """(host arrays of this process's rows, a function of the global batch -> CatalogGuide)."""
    if self.ranges is None:
      return {}, lambda batch: None
    if guidance is None:
      raise ValueError("history exclusion / an assistant needs row_guidance for the rows")
    host = guide_lib.row_prefixes(
        self.catalog_order, self.num_items,
        None if guidance.excluded is None else [guidance.excluded[i] for i in fill],
        None if guidance.probs is None else guidance.probs[fill])
    weight = None
    if guidance.probs is not None:
      weight = jax.device_put(np.float32(alpha), parallel.replicated(self.mesh))
    return host, lambda batch: guide_lib.CatalogGuide(
        self.ranges, batch.get("allowed_prefix"), batch.get("mass_prefix"),
        batch.get("mass_prefix_low"), weight)

  def generate_ids(self, prompt_ids: Sequence[np.ndarray], desc: str = "generate", *,
                   guidance: RowGuidance | None = None, alpha: float | None = None,
                   length_penalty: float | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per prompt: (tokens [R, T], scores [R], lengths [R]) in input order.

    guidance: `row_guidance` of the same rows (exclusion / assistant); alpha overrides
    options.guidance (one compiled program serves every alpha); length_penalty overrides
    options.length_penalty (traced too: one program serves every value).
    """
    from tqdm import tqdm

    data = tokenize_lib.Tokenized.from_lists([list(x) for x in prompt_ids],
                                             [[0] * len(x) for x in prompt_ids])
    results: list[Any] = [None] * len(prompt_ids)
    search_config = self.search_config if length_penalty is None else dataclasses.replace(
        self.search_config, length_penalty=float(length_penalty))
    prefix_len = (tokenize_lib.shared_prefix_length(data) if self.options.share_prompt_prefix
                  else 0)
    start, stop = parallel.process_share(self.batch_size)
    show = self.options.progress and parallel.is_main_process()
    for length, indices in tqdm(self.plan([len(x) for x in prompt_ids]), desc=desc,
                                unit="batch", disable=not show):
      # Filler rows repeat the batch's first row (it fits this bucket; its output is dropped).
      fill = np.where(indices >= 0, indices, indices[0])[start:stop]
      local = tokenize_lib.pad_examples(data, fill, length, pad_id=int(self.config.pad_token_id))
      host, make_guide = self._batch_guide(
          guidance, fill, self.options.guidance if alpha is None else alpha)
      # The per-row prefix sums travel with the prompts: sharded over the data axes.
      batch = parallel.global_batch_from_local(
          {"ids": local["input_ids"], "mask": local["attention_mask"], **host}, self.mesh)
      out = beam_search.search(self.config, search_config, self.params, batch["ids"],
                               batch["mask"], self.trie, self.quote_counts,
                               prefix_len=prefix_len, guide=make_guide(batch))
      tokens, scores, lengths = (_to_host(x) for x in out)
      for b, i in enumerate(indices):
        if i >= 0:
          results[i] = (tokens[b], scores[b], lengths[b])
    return results

  def decode(self, prompt: np.ndarray, tokens: np.ndarray, scores: np.ndarray,
             lengths: np.ndarray) -> tuple[list[str], list[float | None]]:
    """The reference's text: decode(prompt + generation, skip special) after `Response:\\n`."""
    seqs = [np.concatenate([prompt, t[:n]]) for t, n in zip(tokens, lengths)]
    texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
    fmt = self.options.prompt_format
    predict = [t.split(fmt.decoded_split)[-1] if n > 0 else "" for t, n in zip(texts, lengths)]
    if self.options.stop_at_closing_quote:
      # Cut what the last token put after the closing quote (e.g. the `,` of `",`); located in
      # the generated text alone, so quotes of a prompt that is not split off do not count.
      gen = self.tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)],
                                        skip_special_tokens=True)
      predict = [_drop_suffix(p, fmt.after_answer(g)) for p, g in zip(predict, gen)]
    return predict, [float(s) if n > 0 else None for s, n in zip(scores, lengths)]

  def generate_rows(self, rows: Sequence[dict], source: str = "rows",
                    guidance: RowGuidance | None = None) -> list[dict]:
    """The rows with `predict` and `predict_scores` added (input order)."""
    ids = self.prompt_ids(rows, source)
    out = []
    for row, prompt, res in zip(rows, ids, self.generate_ids(ids, guidance=guidance)):
      predict, scores = self.decode(prompt, *res)
      out.append({**row, "predict": predict, "predict_scores": scores})
    return out

  def generate_prompts(self, prompt_texts: Sequence[str]) -> tuple[list[list[str]], list[list]]:
    """(predict, scores) for raw prompt strings (benchmarks; no row checks, no truncation)."""
    ids = [np.asarray(x, np.int32) for x in self.tokenizer(list(prompt_texts))["input_ids"]]
    predict, scores = [], []
    for prompt, res in zip(ids, self.generate_ids(ids)):
      p, s = self.decode(prompt, *res)
      predict.append(p)
      scores.append(s)
    return predict, scores


@dataclasses.dataclass(frozen=True)
class RowGuidance:
  """Per-row inputs of catalog-aware decoding, aligned with the rows generated for."""
  excluded: list[list[int]] | None = None  # item ids each row leaves out of its trie
  probs: np.ndarray | None = None  # [rows, num_items] assistant probabilities


def check_catalog_options(o: GenerateOptions) -> None:
  """The catalog-aware decoding options (config.check runs this on the config's)."""
  g = "--config.generate."
  if o.exclude_history not in EXCLUDE_MODES:
    raise UserError(f"{g}exclude_history={o.exclude_history!r}: choose from {EXCLUDE_MODES}")
  if o.assistant not in ASSISTANTS:
    raise UserError(f"{g}assistant={o.assistant!r}: choose from {ASSISTANTS}")
  check_alpha(o.assistant, o.guidance, f"{g}guidance")
  if o.prior_rows < 0 or (o.prior_rows and o.assistant != "llm_prior"):
    raise UserError(f"{g}prior_rows={o.prior_rows}: rows averaged by the llm_prior assistant "
                    f"(>= 0; assistant={o.assistant})")
  if not o.assistant_temperature > 0:
    raise UserError(f"{g}assistant_temperature={o.assistant_temperature}: must be positive")
  if o.catalog_aware and not o.constrained:
    raise UserError("renormalize, exclude_history and assistant act on the catalog trie: "
                    f"they need constrained decoding ({g}constrained)")


def check_alpha(assistant: str, alpha: float, name: str) -> None:
  """alpha in [0, 1]; the model's own prior also takes alpha > 1 (contrastive decoding)."""
  top = MAX_CONTRASTIVE_ALPHA if assistant == "llm_prior" else 1.0
  if not 0.0 <= alpha <= top:
    raise UserError(f"{name}: alpha {alpha:g} is not in [0, {top:g}] for assistant={assistant} "
                    "(1 = the LLM alone, 0 = the assistant alone"
                    + (", > 1 subtracts the model's history-free prior)" if top > 1 else ")"))


def history_exclusions(rows: Sequence[dict], mode: str, data_dir: str | None,
                       source: str) -> list[list[int]] | None:
  """Per row, the item ids its user already interacted with (None for mode 'none'); the
  Generator adds the other ids of their titles (`same_title_ids`).

  shown: the row's `history_item_ids`; all_past: those and every history item and target of the
  user's prepared examples (train, valid, test splits) whose target time is before the row's.
  """
  if mode == "none":
    return None
  for i, row in enumerate(rows):
    need = ("history_item_ids",) + (("user_id", "target_timestamp") if mode == "all_past" else ())
    missing = [k for k in need if k not in row]
    if missing:
      raise UserError(f"{source}: row {i}: exclude_history={mode} needs {missing} (prepared "
                      "rows have them)")
  shown = [[int(x) for x in row["history_item_ids"]] for row in rows]
  if mode == "shown":
    return shown
  if data_dir is None:
    raise UserError("exclude_history=all_past needs the prepared data directory (--items)")
  return [sorted(set(s) | set(p)) for s, p in zip(shown, _past_items(rows, data_dir))]


def same_title_ids(excluded: Sequence[Sequence[int]], titles: Sequence[str]) -> list[list[int]]:
  """Each row's excluded ids with every other id of the same title added.

  The search writes titles, not ids: ML-100K lists some films under two ids (Fly Away Home is
  303 and 499), and leaving out only the watched id would let the search write the watched
  title all the same, through the other one.
  """
  by_title = titles_lib.ids_by_title(titles)
  return [sorted({j for i in ids if 0 <= i < len(titles) for j in by_title[titles[i]]} |
                 {int(i) for i in ids}) for ids in excluded]


def _past_items(rows: Sequence[dict], data_dir: str) -> list[list[int]]:
  """Per row: items of the user's prepared examples with an earlier target time."""
  import bisect

  from bigrec_jax.data import prepared

  by_user: dict[str, list[tuple[int, list[int]]]] = {}
  for split in ("train", "valid", "test"):
    for r in prepared.read_rows(os.path.join(data_dir, f"{split}.json")):
      by_user.setdefault(str(r["user_id"]), []).append(
          (int(r["target_timestamp"]), list(r["history_item_ids"]) + [int(r["target_item_id"])]))
  for seq in by_user.values():
    seq.sort(key=lambda e: e[0])
  out = []
  for row in rows:
    seq = by_user.get(str(row["user_id"]), [])
    earlier = bisect.bisect_left([t for t, _ in seq], int(row["target_timestamp"]))
    out.append(sorted({i for _, items in seq[:earlier] for i in items}))
  return out


def _drop_suffix(text: str, suffix: str) -> str:
  return text[:-len(suffix)] if suffix and text.endswith(suffix) else text


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _row_problem(row: Any, titles: Sequence[str] | None = None) -> str | None:
  if not isinstance(row, dict):
    return f"expected an object with 'instruction' and 'input', got {type(row).__name__}"
  for key in ("instruction", "input"):
    if key not in row:
      return f"missing {key!r}"
    if not isinstance(row[key], str):
      return f"{key!r} must be a string, got {type(row[key]).__name__}"
  if not row["instruction"].strip():
    return "empty prompt: 'instruction' is empty"
  if not row["input"].strip():
    return "empty prompt: 'input' (the user's history) is empty"
  ids = row.get("history_item_ids") if titles is not None else None
  if ids is not None and not (isinstance(ids, list) and all(
      isinstance(i, int) and 0 <= i < len(titles) for i in ids)):
    return f"history_item_ids {str(ids)[:80]} are not all item ids of the {len(titles)}-item catalog"
  return None


# -------------------------------------------------------------------- loading helpers

def resolve_adapter(path: str) -> str:
  """A PEFT adapter directory, given it or a training workdir that holds one in adapter/."""
  kind, directory = resolve_trained(path)
  if kind != "lora":
    raise UserError(f"{path}: a fully fine-tuned model ({directory}), not a LoRA adapter")
  return directory


def _is_peft_dir(path: str) -> bool:
  return files.exists(os.path.join(path, "adapter_config.json"))


def _is_hf_model_dir(path: str) -> bool:
  return (files.isdir(path) and files.exists(os.path.join(path, "config.json"))
          and any(n.endswith(".safetensors") for n in files.listdir(path)))


def resolve_trained(path: str) -> tuple[str, str]:
  """What training produced, given it or its workdir: ("lora", PEFT adapter dir) or ("full",
  HF model dir of train.mode=full). A workdir's train_summary.json says which mode ran."""
  if _is_peft_dir(path):
    return "lora", path
  if _is_hf_model_dir(path):
    return "full", path
  summary = os.path.join(path, "train_summary.json")
  mode = files.read_json(summary).get("mode", "lora") if files.exists(summary) else None
  adapter, model = os.path.join(path, "adapter"), os.path.join(path, "model")
  if mode != "full" and _is_peft_dir(adapter):
    return "lora", adapter
  if mode != "lora" and _is_hf_model_dir(model):
    return "full", model
  raise UserError(f"{path}: not a PEFT adapter directory (adapter_config.json), an HF model "
                  "directory (config.json + *.safetensors), nor a training workdir with "
                  "adapter/ or model/")


def load_merged_model(model_path: str | None = None, adapter: str | None = None, *,
                      dtype: str = "float32", mesh=None, matmul_dtype: str = "",
                      kernels: str = "auto", tokenizer: str | None = None):
  """The base model with the adapter (if any) merged into its weights, for fast decoding.

  `adapter` may also be a full fine-tuning output (or its workdir): its weights replace the
  base model's, and `model_path` is not read.
  """
  from bigrec_jax.model import load_model, lora

  if adapter and resolve_trained(adapter)[0] == "full":
    model_path, adapter = resolve_trained(adapter)[1], None

  model = load_model(model_path or None, dtype=dtype, param_dtype=dtype, mesh=mesh,
                     matmul_dtype=matmul_dtype, kernels=kernels, tokenizer=tokenizer)
  if adapter:
    adapter_tree, lora_config = lora.import_peft(resolve_adapter(adapter), model.config)
    model.params = jax.jit(lora.merge, static_argnums=2)(model.params, adapter_tree, lora_config)
  return model


def _items_dir(items: str) -> str:
  """The prepared-data directory of --items (the directory, or the one holding items.tsv)."""
  return os.path.dirname(files.abspath(items)) if files.isfile(items) else items


def read_titles(items: str) -> list[str]:
  """Catalog titles from items.tsv (a prepared-data directory or the file itself)."""
  from bigrec_jax.data import prepared

  directory = items
  if files.isfile(items):
    if os.path.basename(items) != "items.tsv":
      raise UserError(f"{items}: expected a prepared-data directory or its items.tsv")
    directory = os.path.dirname(files.abspath(items))
  return prepared.read_items(directory)


def read_input_rows(path: str) -> list[dict]:
  rows = files.read_json(path)
  if not isinstance(rows, list):
    raise UserError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
  if not rows:
    raise UserError(f"{path}: no rows to generate for")
  return rows


def run(input_path: str, output_path: str, options: GenerateOptions, **kw) -> dict[str, Any]:
  """Reads rows, generates, writes output_path atomically (process 0); returns a summary."""
  return run_files([(input_path, output_path)], options, **kw)[0]


def _best_along(grid_metrics: dict[tuple[float, float], float], axis: int,
                values: Sequence[float]) -> dict[str, float]:
  """{value: the best metric over the other grid axis} for one axis of (alpha, penalty) points."""
  return {f"{v:g}": max(m for point, m in grid_metrics.items() if point[axis] == v)
          for v in values}


def run_files(jobs: Sequence[tuple[str, str]], options: GenerateOptions, *,
              model_path: str | None = None, adapter: str | None = None, items: str | None = None,
              dtype: str = "float32", mesh_shape: Sequence[int] = (-1, 1, 1),
              matmul_dtype: str = "", kernels: str = "auto", tokenizer: str | None = None,
              assistant_scores: Sequence[str] | None = None,
              alpha_grid: Sequence[float] = (),
              length_penalty_grid: Sequence[float] = (),
              grid_metric: Callable[[list[dict]], float] | None = None
              ) -> list[dict[str, Any]]:
  """`run` for several (input, output) files with one model load, merge and trie build.

  assistant_scores: per job, the .npy of a CF assistant's scores for that file's rows.
  alpha_grid (with an assistant) and/or length_penalty_grid: the first job's rows are generated
  with every (alpha, length_penalty) of the grids' product (an empty grid: the option's value)
  and the pair `grid_metric(rows with predict)` rates highest (ties: the larger alpha, nearer
  the LLM alone, then the larger penalty) is used for every job; the summaries say which.
  """
  import time

  check_catalog_options(options)
  inputs = []
  if options.constrained and not items:
    raise UserError("--constrained needs --items (items.tsv of the catalog)")
  titles = read_titles(items) if items else None
  data_dir = _items_dir(items) if items else None
  if data_dir and files.exists(os.path.join(data_dir, "stats.json")):  # the catalog's wording
    domain = files.read_json(os.path.join(data_dir, "stats.json")).get("domain", "movie")
    options = dataclasses.replace(options, prompt_format=dataclasses.replace(
        options.prompt_format, domain=domain))
  for input_path, _ in jobs:  # every file's input errors before the model loads
    rows = read_input_rows(input_path)
    for i, row in enumerate(rows):
      problem = _row_problem(row, titles)
      if problem:
        raise UserError(f"{input_path}: row {i}: {problem}")
    inputs.append(rows)
  cf_scores: list[np.ndarray | None] = [None] * len(jobs)
  if options.assistant in CF_ASSISTANTS:
    from bigrec_jax.evaluate.inputs import read_score_matrix

    if not assistant_scores or len(assistant_scores) != len(jobs):
      raise UserError(f"--assistant={options.assistant} needs --assistant_scores: one score "
                      "matrix per input file (baselines/<model>/scores_<split>.npy)")
    cf_scores = [read_score_matrix(path, len(rows), len(titles), input_path)
                 for path, rows, (input_path, _) in zip(assistant_scores, inputs, jobs)]
  if alpha_grid and options.assistant == "none":
    raise ValueError("alpha_grid needs an assistant")
  if (alpha_grid or length_penalty_grid) and grid_metric is None:
    raise ValueError("a search grid needs grid_metric")
  mesh = parallel.make_mesh(mesh_shape)
  model = load_merged_model(model_path, adapter, dtype=dtype, mesh=mesh, matmul_dtype=matmul_dtype,
                            kernels=kernels, tokenizer=tokenizer)
  generator = Generator(model, options, titles=titles, mesh=mesh)
  catalog = None if titles is None else set(titles)
  summaries = []
  alpha, penalty, grid_metrics = options.guidance, options.length_penalty, {}
  grid = [(a, lp) for a in (alpha_grid or (alpha,)) for lp in (length_penalty_grid or (penalty,))]
  for job, ((input_path, output_path), rows) in enumerate(zip(jobs, inputs)):
    ids = generator.prompt_ids(rows, input_path, titles)
    guidance = generator.row_guidance(rows, input_path, data_dir=data_dir,
                                      assistant_scores=cf_scores[job])

    def generate(a, lp):
      results = generator.generate_ids(ids, guidance=guidance, alpha=a, length_penalty=lp)
      out = []
      for row, prompt, res in zip(rows, ids, results):
        predict, scores = generator.decode(prompt, *res)
        out.append({**row, "predict": predict, "predict_scores": scores})
      return out

    started = time.time()
    if job == 0 and len(grid) > 1:
      by_point = {}
      for point in grid:
        by_point[point] = generate(*point)
        grid_metrics[point] = float(grid_metric(by_point[point]))
        log.info("alpha %g, length_penalty %g: %s %.4f", *point, input_path, grid_metrics[point])
      alpha, penalty = max(grid, key=lambda p: (grid_metrics[p], *p))
      out = by_point[(alpha, penalty)]
    else:
      out = generate(alpha, penalty)
    seconds = time.time() - started
    if parallel.is_main_process():
      files.write_json(output_path, out)
    summary = {"rows": len(out), "seconds": round(seconds, 3), "output": output_path,
               "compiled_programs": beam_search.TRACE_COUNTS["search"],
               "prompt_format": options.prompt_format.record(), "length_penalty": penalty}
    if length_penalty_grid and grid_metrics:
      summary["length_penalty_grid"] = _best_along(grid_metrics, 1, length_penalty_grid)
    if options.catalog_aware:
      summary["decoding"] = {"renormalize": options.renormalize,
                             "exclude_history": options.exclude_history,
                             "assistant": options.assistant, "guidance": alpha,
                             "assistant_temperature": options.assistant_temperature}
      if alpha_grid and grid_metrics:
        summary["decoding"]["alpha_grid"] = _best_along(grid_metrics, 0, alpha_grid)
    if catalog is not None:
      summary["best_is_catalog_title"] = sum(
          options.prompt_format.parse(r["predict"][0]) in catalog for r in out) / len(out)
    summaries.append(summary)
  return summaries
