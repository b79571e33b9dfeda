"""Generation over a file of rows: the library function behind launch/generate.py.

Rows are in the reference format (JSON list of objects with `instruction` and `input`; any other
field is kept). Each gets `predict`: num_return_sequences strings, best first, each the decoded
prompt + generation (special tokens skipped) split at the last `Response:\\n`, as the reference
`inference.py` does; and `predict_scores`: the beam scores (summed log-prob / length **
length_penalty; null where constrained decoding found fewer hypotheses).
With `stop_at_closing_quote` (beyond the reference) a hypothesis ends at the closing `"` of its
title and its text is cut right after that quote (a final token like `",` leaves the `,` out).

Prompts are bucketed by token length (multiples of `bucket_multiple`) so jit compiles one program
per bucket; every batch is padded to `batch_size` rows (filler rows are dropped). The batch is
sharded over the mesh's data axes; with several processes each feeds its share of every global
batch and every process receives the whole result (only process 0 writes the file).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import jax
import numpy as np

from bigrec_jax import files, parallel
from bigrec_jax.data import prompts as prompts_lib
from bigrec_jax.data import tokenize as tokenize_lib
from bigrec_jax.files import UserError
from bigrec_jax.generate import beam_search, decoder, trie as trie_lib

log = logging.getLogger(__name__)

RESPONSE_SPLIT = "Response:\n"  # the reference splits the decoded text here and keeps the end


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
          stop_at_closing_quote=options.stop_at_closing_quote)
    except ValueError as e:
      raise UserError(f"generation options: {e}") from None
    if options.batch_size < 1:
      raise UserError(f"batch_size must be >= 1, got {options.batch_size}")
    if options.bucket_multiple < 1:
      raise UserError(f"bucket_multiple must be >= 1, got {options.bucket_multiple}")
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
    self.trie = None
    if options.constrained:
      if not titles:
        raise UserError("constrained decoding needs the catalog: pass --items (items.tsv)")
      tables, longest = trie_lib.catalog_tables(self.tokenizer, titles, self.config.vocab_size,
                                                eos_token_id=int(eos))
      if longest > options.max_new_tokens:
        log.warning("the longest catalog title takes %d tokens (with quotes and EOS), more than "
                    "max_new_tokens=%d: such titles are cut off", longest, options.max_new_tokens)
      self.trie = trie_lib.to_device(tables, parallel.replicated(self.mesh))
    self.quote_counts = None
    if options.stop_at_closing_quote:
      self.quote_counts = jax.device_put(
          beam_search.token_quote_counts(self.tokenizer, self.config.vocab_size),
          parallel.replicated(self.mesh))

  # ------------------------------------------------------------------ input checks
  def prompt_ids(self, rows: Sequence[Any], source: str = "rows") -> list[np.ndarray]:
    """Token ids of every row's prompt; bad rows raise a UserError naming the row."""
    for i, row in enumerate(rows):
      problem = _row_problem(row)
      if problem:
        raise UserError(f"{source}: row {i}: {problem}")
    data = tokenize_lib.tokenize_prompts(self.tokenizer, list(rows))
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

  def generate_ids(self, prompt_ids: Sequence[np.ndarray], desc: str = "generate"
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per prompt: (tokens [R, T], scores [R], lengths [R]) in input order."""
    from tqdm import tqdm

    data = tokenize_lib.Tokenized.from_lists([list(x) for x in prompt_ids],
                                             [[0] * len(x) for x in prompt_ids])
    results: list[Any] = [None] * len(prompt_ids)
    prefix_len = (tokenize_lib.shared_prefix_length(data) if self.options.share_prompt_prefix
                  else 0)
    start, stop = parallel.process_share(self.batch_size)
    show = self.options.progress and parallel.is_main_process()
    for length, indices in tqdm(self.plan([len(x) for x in prompt_ids]), desc=desc,
                                unit="batch", disable=not show):
      # Filler rows repeat the batch's first row (it fits this bucket; its output is dropped).
      fill = np.where(indices >= 0, indices, indices[0])[start:stop]
      local = tokenize_lib.pad_examples(data, fill, length, pad_id=int(self.config.pad_token_id))
      batch = parallel.global_batch_from_local(
          {"ids": local["input_ids"], "mask": local["attention_mask"]}, self.mesh)
      out = beam_search.search(self.config, self.search_config, self.params, batch["ids"],
                               batch["mask"], self.trie, self.quote_counts,
                               prefix_len=prefix_len)
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
    predict = [t.split(RESPONSE_SPLIT)[-1] if n > 0 else "" for t, n in zip(texts, lengths)]
    if self.options.stop_at_closing_quote:
      # Cut what the last token put after the closing quote (e.g. the `,` of `",`); located in
      # the generated text alone, so quotes of a prompt that is not split off do not count.
      gen = self.tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)],
                                        skip_special_tokens=True)
      predict = [_drop_suffix(p, after_closing_quote(g)) for p, g in zip(predict, gen)]
    return predict, [float(s) if n > 0 else None for s, n in zip(scores, lengths)]

  def generate_rows(self, rows: Sequence[dict], source: str = "rows") -> list[dict]:
    """The rows with `predict` and `predict_scores` added (input order)."""
    ids = self.prompt_ids(rows, source)
    out = []
    for row, prompt, res in zip(rows, ids, self.generate_ids(ids)):
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


def after_closing_quote(text: str) -> str:
  """What follows the second `"` of the text ("" when it has fewer than two)."""
  first = text.find('"')
  second = text.find('"', first + 1) if first >= 0 else -1
  return "" if second < 0 else text[second + 1:]


def _drop_suffix(text: str, suffix: str) -> str:
  return text[:-len(suffix)] if suffix and text.endswith(suffix) else text


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _row_problem(row: Any) -> str | None:
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
  return None


# -------------------------------------------------------------------- loading helpers

def resolve_adapter(path: str) -> str:
  """A PEFT adapter directory, given it or a training workdir that holds one in adapter/."""
  kind, directory = resolve_trained(path)
  if kind != "lora":
    raise UserError(f"{path}: a fully fine-tuned model ({directory}), not a LoRA adapter")
  return directory


def _is_peft_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, "adapter_config.json"))


def _is_hf_model_dir(path: str) -> bool:
  return (os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))
          and any(n.endswith(".safetensors") for n in os.listdir(path)))


def resolve_trained(path: str) -> tuple[str, str]:
  """What training produced, given it or its workdir: ("lora", PEFT adapter dir) or ("full",
  HF model dir of train.mode=full). A workdir's train_summary.json says which mode ran."""
  if _is_peft_dir(path):
    return "lora", path
  if _is_hf_model_dir(path):
    return "full", path
  summary = os.path.join(path, "train_summary.json")
  mode = files.read_json(summary).get("mode", "lora") if os.path.exists(summary) else None
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
                      tokenizer: str | None = None):
  """The base model with the adapter (if any) merged into its weights, for fast decoding.

  `adapter` may also be a full fine-tuning output (or its workdir): its weights replace the
  base model's, and `model_path` is not read.
  """
  from bigrec_jax.model import load_model, lora

  if adapter and resolve_trained(adapter)[0] == "full":
    model_path, adapter = resolve_trained(adapter)[1], None

  model = load_model(model_path or None, dtype=dtype, param_dtype=dtype, mesh=mesh,
                     matmul_dtype=matmul_dtype, tokenizer=tokenizer)
  if adapter:
    adapter_tree, lora_config = lora.import_peft(resolve_adapter(adapter), model.config)
    model.params = jax.jit(lora.merge, static_argnums=2)(model.params, adapter_tree, lora_config)
  return model


def read_titles(items: str) -> list[str]:
  """Catalog titles from items.tsv (a prepared-data directory or the file itself)."""
  from bigrec_jax.data import prepared

  directory = items
  if os.path.isfile(items):
    if os.path.basename(items) != "items.tsv":
      raise UserError(f"{items}: expected a prepared-data directory or its items.tsv")
    directory = os.path.dirname(os.path.abspath(items))
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


def run_files(jobs: Sequence[tuple[str, str]], options: GenerateOptions, *,
              model_path: str | None = None, adapter: str | None = None, items: str | None = None,
              dtype: str = "float32", mesh_shape: Sequence[int] = (-1, 1, 1),
              matmul_dtype: str = "", tokenizer: str | None = None) -> list[dict[str, Any]]:
  """`run` for several (input, output) files with one model load, merge and trie build."""
  import time

  inputs = []
  for input_path, _ in jobs:  # every file's input errors before the model loads
    rows = read_input_rows(input_path)
    for i, row in enumerate(rows):
      problem = _row_problem(row)
      if problem:
        raise UserError(f"{input_path}: row {i}: {problem}")
    inputs.append(rows)
  if options.constrained and not items:
    raise UserError("--constrained needs --items (items.tsv of the catalog)")
  titles = read_titles(items) if items else None
  mesh = parallel.make_mesh(mesh_shape)
  model = load_merged_model(model_path, adapter, dtype=dtype, mesh=mesh, matmul_dtype=matmul_dtype,
                            tokenizer=tokenizer)
  generator = Generator(model, options, titles=titles, mesh=mesh)
  catalog = None if titles is None else set(titles)
  summaries = []
  for (input_path, output_path), rows in zip(jobs, inputs):
    ids = generator.prompt_ids(rows, input_path)
    started = time.time()
    results = generator.generate_ids(ids)
    seconds = time.time() - started
    out = []
    for row, prompt, res in zip(rows, ids, results):
      predict, scores = generator.decode(prompt, *res)
      out.append({**row, "predict": predict, "predict_scores": scores})
    if parallel.is_main_process():
      files.write_json(output_path, out)
    summary = {"rows": len(out), "seconds": round(seconds, 3), "output": output_path,
               "compiled_programs": beam_search.TRACE_COUNTS["search"]}
    if catalog is not None:
      summary["best_is_catalog_title"] = sum(
          prompts_lib.single_title(r["predict"][0]) in catalog for r in out) / len(out)
    summaries.append(summary)
  return summaries
