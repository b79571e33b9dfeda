"""From an interaction log to time-split next-item examples (the reference's rules; departures are options).

Per user, interactions are sorted by time (stable: ties keep file order); users keep the order in
which they first appear in the file. An example is a target position with the previous
`history_len` items as history. All examples are then sorted by target time (stable) and split
80/10/10 in that order, exactly as the reference notebooks do.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bigrec_jax.data import prompts
from bigrec_jax.data.raw import RawLog
from bigrec_jax.files import UserError


@dataclasses.dataclass(frozen=True)
class SequenceRules:
  """Which positions become examples (bigrec_jax/REFERENCE.md, "Data").

  - movie rule (the reference's MovieLens notebook as it is today): every position `i >= 10` of a
    user's time-sorted sequence, whatever its rating: `min_history=10`,
    `keep_last_of_short_users=False`, `target_rating_above=None`.
  - game rule (the reference's Amazon notebook): positions `i >= min(10, n-1)`, i.e. users with
    more than 10 items give every position with a full history, shorter users give one example
    (their last item after all earlier ones; a single-review user's has an empty history);
    `keep_last_of_short_users=True`.
  Departures, off by default: `target_rating_above=3` keeps only targets rated above 3 (the
  reference's first commit: "a movie the user likes"; histories keep every rating), and
  `drop_empty_history` drops examples without a history item.
  """
  history_len: int = 10
  min_history: int = 10
  keep_last_of_short_users: bool = False
  target_rating_above: float | None = None
  drop_empty_history: bool = False
  train_fraction: float = 0.8
  valid_fraction: float = 0.1

  def check(self) -> "SequenceRules":
    if self.history_len < 1:
      raise UserError(f"history_len must be >= 1, got {self.history_len}")
    if self.min_history < 1:
      raise UserError(f"min_history must be >= 1, got {self.min_history}")
    if not (0 < self.train_fraction and 0 <= self.valid_fraction
            and self.train_fraction + self.valid_fraction <= 1):
      raise UserError(f"split fractions --train_fraction={self.train_fraction} "
                      f"--valid_fraction={self.valid_fraction} (--config.data.*) "
                      "must be positive and sum to at most 1 (test gets the rest)")
    return self


def describe_rules(rules: dict) -> str:
  """One line for reports: which positions became examples (`rules` as stats.json records them)."""
  if rules.get("keep_last_of_short_users"):
    text = (f"positions i >= min({rules['min_history']}, n-1) of each user's n interactions "
            "(the reference's Amazon rule)")
  else:
    text = f"every position i >= {rules['min_history']} of each user's interactions"
  if rules.get("target_rating_above") is not None:
    text += (f", only targets rated above {rules['target_rating_above']:g} (departure: the "
             "reference's first commit)")
  else:
    text += ", every target whatever its rating (the reference today)"
  if rules.get("drop_empty_history"):
    text += ", examples without history dropped (departure)"
  return text + f"; history of the last {rules['history_len']} items"


@dataclasses.dataclass(frozen=True)
class Example:
  """One next-item example; positions index the user-grouped, time-sorted interaction order."""
  user_id: str
  history: tuple[int, ...]
  target: int
  timestamp: int
  history_start: int
  target_position: int


@dataclasses.dataclass(frozen=True)
class Sequences:
  """The log regrouped per user: `order` lists interaction indices user by user, time-sorted."""
  order: np.ndarray
  user_of: np.ndarray  # [n] user number of order[k]
  starts: np.ndarray  # [U + 1] segment offsets into order
  users: list[str]


def user_sequences(log: RawLog) -> Sequences:
  codes: dict[str, int] = {}
  user_code = np.fromiter((codes.setdefault(u, len(codes)) for u in log.user_ids), dtype=np.int64,
                          count=len(log.user_ids))
  order = np.lexsort((log.timestamps, user_code))  # stable: ties keep file order
  user_of = user_code[order]
  starts = np.searchsorted(user_of, np.arange(len(codes) + 1))
  return Sequences(order=order, user_of=user_of, starts=starts, users=list(codes))


def build_examples(log: RawLog, rules: SequenceRules) -> list[Example]:
  """Every example of the log, sorted by target timestamp (stable)."""
  rules.check()
  seq = user_sequences(log)
  items = log.item_index[seq.order]
  stamps = log.timestamps[seq.order]
  ratings = log.ratings[seq.order]
  start = seq.starts[seq.user_of]
  length = seq.starts[seq.user_of + 1] - start
  local = np.arange(len(seq.order)) - start
  first = np.where(length > rules.min_history, rules.min_history,
                   np.where(rules.keep_last_of_short_users, length - 1, length))
  keep = local >= first
  if rules.drop_empty_history:
    keep &= local >= 1
  if rules.target_rating_above is not None:
    keep &= ratings > rules.target_rating_above
  targets = np.flatnonzero(keep)
  targets = targets[np.argsort(stamps[targets], kind="stable")]
  examples = []
  for g in targets.tolist():
    h0 = max(int(start[g]), g - rules.history_len)
    examples.append(Example(user_id=seq.users[int(seq.user_of[g])],
                            history=tuple(items[h0:g].tolist()), target=int(items[g]),
                            timestamp=int(stamps[g]), history_start=h0, target_position=g))
  return examples


def split_examples(examples: Sequence, train_fraction: float = 0.8, valid_fraction: float = 0.1):
  """(train, valid, test) cut in time order at int(n*0.8) and int(n*0.9), as the reference."""
  n = len(examples)
  a = int(n * train_fraction)
  b = int(n * round(train_fraction + valid_fraction, 12))
  return list(examples[:a]), list(examples[a:b]), list(examples[b:])


def training_popularity(log: RawLog, train: Sequence[Example]) -> list[int]:
  """Interaction counts per item id over the training split only.

  Counted: every interaction that a training example shows, as its target or inside its history,
  each (user, position) once even when several examples show it. Nothing only seen by valid or
  test examples is counted, so the counts carry no information from after the training period.
  """
  seq = user_sequences(log)
  marks = np.zeros(len(seq.order) + 1, dtype=np.int64)
  if train:
    lo = np.fromiter((e.history_start for e in train), dtype=np.int64, count=len(train))
    hi = np.fromiter((e.target_position for e in train), dtype=np.int64, count=len(train))
    np.add.at(marks, lo, 1)
    np.add.at(marks, hi + 1, -1)
  seen = np.cumsum(marks[:-1]) > 0
  items = log.item_index[seq.order][seen]
  return np.bincount(items, minlength=log.num_items).astype(np.int64).tolist()


def make_row(example: Example, titles: Sequence[str], domain: str) -> dict:
  """A prepared-data row: the reference fields plus ids, so no later stage re-matches titles."""
  row = prompts.make_fields(domain, [titles[i] for i in example.history], titles[example.target])
  row.update(target_item_id=example.target, history_item_ids=list(example.history),
             target_timestamp=example.timestamp, user_id=example.user_id, domain=domain)
  return row


def sample_rows(rows: Sequence, n: int, seed: int = 42) -> list:
  """n rows drawn as pandas `DataFrame.sample(n, random_state=seed)` draws them (same order).

  That is `RandomState(seed).permutation(len)[:n]`; all rows (unshuffled) when there are at most n.
  """
  if n < 0 or len(rows) <= n:
    return list(rows)
  picked = np.random.RandomState(seed).permutation(len(rows))[:n]
  return [rows[i] for i in picked.tolist()]


def few_shot(rows: Sequence, n: int, seed: int) -> list:
  """The reference few-shot set: HF `shuffle(seed).select(range(n)).shuffle(seed)`.

  `datasets.Dataset.shuffle(seed)` is `np.random.default_rng(seed).permutation(len)`; the
  reference shuffles, keeps the first n (all when n is -1 or larger than the set), shuffles again.
  """
  if n < -1:
    raise UserError(f"few-shot sample must be -1 (all) or >= 0, got {n}")
  first = np.random.default_rng(seed).permutation(len(rows))
  if 0 <= n < len(rows):
    first = first[:n]
  picked = first[np.random.default_rng(seed).permutation(len(first))]
  return [rows[i] for i in picked.tolist()]

