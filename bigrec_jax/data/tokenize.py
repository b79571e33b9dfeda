"""Tokenization of prepared rows for training and generation (reference `generate_and_tokenize_prompt`).

- training text = `PromptFormat.full_text(row, titles)` (from the row's item ids and the catalog's
  titles when given, so any format reads an existing prepared directory), truncated to
  `cutoff_len` tokens, EOS appended when it fits and is not already last;
- labels = the input ids (`train_on_inputs=True`, the reference default), or with
  `train_on_inputs=False` the first len(tokenize(prompt)) labels set to -100, as the reference;
- labels stay aligned with input_ids: the loss shifts them by one.
Works with any Hugging Face tokenizer object (LLaMA SentencePiece, SmolLM2 GGUF BPE, ...).
Nothing is cached here: callers keep the `Tokenized` result if they want to reuse it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence, Union

import numpy as np

from bigrec_jax.data import prompts

IGNORE_INDEX = -100
PAD_ID = 0
CUTOFF_LEN = 512
_CHUNK = 4096  # texts per tokenizer call (bounds peak memory on millions of rows)


@dataclasses.dataclass
class Tokenized:
  """Token ids and labels of many examples, stored flat with offsets (cheap for 1M+ rows)."""
  ids: np.ndarray  # int32 [total]
  labels: np.ndarray  # int32 [total]
  offsets: np.ndarray  # int64 [n + 1]

  def __len__(self) -> int:
    return int(self.offsets.shape[0] - 1)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def label_span(self, ignore_index: int = -100) -> int:
    """Trailing positions of the longest example's window that predict a label.

    Position t is trained on labels[t + 1], so an example whose first label is at index i
    needs its last len - i + 1 positions (0 when it has no label). With left padding, the
    loss of every row of a batch lives in the batch's last `label_span()` columns.
    """
    hits = np.flatnonzero(self.labels != ignore_index)
    if hits.size == 0:
      return 0
    row = np.searchsorted(self.offsets, hits, side="right") - 1
    first = np.full(len(self), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, row, hits)
    labelled = first < np.iinfo(np.int64).max
    return int(np.max(self.offsets[1:][labelled] - first[labelled] + 1))

  def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = self.offsets[i], self.offsets[i + 1]
    return self.ids[a:b], self.labels[a:b]

  @classmethod
  def from_lists(cls, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> "Tokenized":
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    def flat(seqs):
      return (np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if len(seqs)
              else np.zeros(0, np.int32))

    return cls(ids=flat(ids), labels=flat(labels), offsets=offsets)


def shared_prefix_length(*datasets: Tokenized, training: bool = False) -> int:
  """How many leading tokens every example of every dataset shares, leaving each example at
  least one token after them (0 when there is nothing to share). BIGRec prompts all open with
  the same instruction, which the model then computes once per batch (llama.prefix_then_suffix).

  training=True also returns 0 when any example labels its first token (whole-prompt loss, the
  reference default): the loss then includes the padding position before a row predicting that
  token, whose hidden state only the plain left-padded layout reproduces.
  """
  parts = [d for d in datasets if d is not None and len(d)]
  if not parts:
    return 0
  if training and any((d.labels[d.offsets[:-1]] != IGNORE_INDEX).any() for d in parts):
    return 0
  ref_ids, _ = parts[0].example(0)
  shared = len(ref_ids)
  for data in parts:
    for i in range(len(data)):
      a, b = data.offsets[i], data.offsets[i + 1]
      shared = min(shared, int(b - a) - 1)
      if shared <= 0:
        return 0
      diff = np.flatnonzero(data.ids[a:a + shared] != ref_ids[:shared])
      if diff.size:
        shared = int(diff[0])
  return max(shared, 0)


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
  out: list[list[int]] = []
  for k in range(0, len(texts), _CHUNK):
    chunk = list(texts[k:k + _CHUNK])
    if max_length is None:
      enc = tokenizer(chunk, padding=False)
    else:
      enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=False)
    out.extend(list(x) for x in enc["input_ids"])
  return out


def _eos_id(tokenizer: Any) -> int:
  eos = getattr(tokenizer, "eos_token_id", None)
  if eos is None:
    raise ValueError("the tokenizer has no eos_token_id; training targets need one")
  return int(eos)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], *, cutoff_len: int = CUTOFF_LEN,
                   add_eos: bool = True) -> list[list[int]]:
  """Reference `tokenize()`: right-truncate to cutoff_len, then EOS if room and not already last."""
  ids = _encode(tokenizer, texts, cutoff_len)
  if add_eos:
    eos = _eos_id(tokenizer)
    for seq in ids:
      if (not seq or seq[-1] != eos) and len(seq) < cutoff_len:
        seq.append(eos)
  return ids


Template = Union[str, prompts.PromptFormat]
Titles = Union[Sequence[str], Sequence[Sequence[str]], None]


def _render(method: str, rows: Sequence[dict], template: Template, titles: Titles) -> list[str]:
  """`PromptFormat.<method>(row, catalog)` per row; titles: one catalog for every row, one per
  row (multi-domain training), or None (the rows' stored text)."""
  fmt = template if isinstance(template, prompts.PromptFormat) else prompts.PromptFormat(template)
  if titles is None or not len(titles) or isinstance(titles[0], str):
    titles = [titles] * len(rows)
  return [getattr(fmt, method)(r, t) for r, t in zip(rows, titles)]


def tokenize_rows(tokenizer: Any, rows: Sequence[dict], *, cutoff_len: int = CUTOFF_LEN,
                  train_on_inputs: bool = True, add_eos: bool = True,
                  template: Template = "alpaca", titles: Titles = None) -> Tokenized:
  """Training/eval-loss examples: ids of prompt + output (+ EOS) and their labels."""
  ids = tokenize_texts(tokenizer, _render("full_text", rows, template, titles),
                       cutoff_len=cutoff_len, add_eos=add_eos)
  if train_on_inputs:
    labels = ids
  else:
    prompt_lens = [len(p) for p in tokenize_texts(
        tokenizer, _render("prompt", rows, template, titles), cutoff_len=cutoff_len,
        add_eos=False)]
    labels = [[IGNORE_INDEX] * min(n, len(s)) + s[n:] for s, n in zip(ids, prompt_lens)]
  return Tokenized.from_lists(ids, labels)


def tokenize_prompts(tokenizer: Any, rows: Sequence[dict], *, max_len: int | None = None,
                     template: Template = "alpaca", titles: Titles = None) -> Tokenized:
  """Generation inputs: prompts ending at the response marker, no EOS, labels all -100.

  Prompts are not truncated by default; with `max_len`, the first tokens are dropped so the
  response marker the model continues from is always kept.
  """
  ids = _encode(tokenizer, _render("prompt", rows, template, titles), None)
  if max_len is not None:
    ids = [s[-max_len:] for s in ids]
  return Tokenized.from_lists(ids, [[IGNORE_INDEX] * len(s) for s in ids])


def pad_examples(data: Tokenized, indices: Iterable[int], length: int, *, side: str = "left",
                 pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
  """{"input_ids", "attention_mask", "labels"} [B, length] int32 for the given rows.

  side="left" (reference; generation needs it) puts the padding before the tokens. An index of
  -1 is a filler row: a copy of row 0 with every label -100, so it adds nothing to the loss
  and its attention is still well defined.
  """
  if side not in ("left", "right"):
    raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
  indices = list(indices)
  batch = {"input_ids": np.full((len(indices), length), pad_id, dtype=np.int32),
           "attention_mask": np.zeros((len(indices), length), dtype=np.int32),
           "labels": np.full((len(indices), length), IGNORE_INDEX, dtype=np.int32)}
  for b, i in enumerate(indices):
    ids, labels = data.example(max(i, 0))
    n = ids.shape[0]
    if n > length:
      raise ValueError(f"example {i} has {n} tokens, more than the padded length {length}")
    cols = slice(length - n, length) if side == "left" else slice(0, n)
    batch["input_ids"][b, cols] = ids
    batch["attention_mask"][b, cols] = 1
    if i >= 0:
      batch["labels"][b, cols] = labels
  return batch


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
  """Positions counted over real tokens only (0 at the first real token; padding gets 0)."""
  return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0).astype(np.int32)
