"""A tiny synthetic prepared-data directory (written by tests/common_fixtures.write_prepared_dir).

The synthetic rule: the next item is the last history item + 1 (mod the catalog size), so a
sequential model that reads the order of the history can reach HR@1 = 1.
"""
from __future__ import annotations

import numpy as np

from bigrec_jax.data import prompts
from common_fixtures import write_prepared_dir


def title(item: int) -> str:
  return f"Item {item}"


def rule_rows(n: int, num_items: int, history_len: int, rng: np.random.Generator,
              min_len: int | None = None, first_timestamp: int = 0) -> list[dict]:
  rows = []
  for i in range(n):
    length = history_len if min_len is None else int(rng.integers(min_len, history_len + 1))
    history = [int(x) for x in rng.integers(0, num_items, size=length)]
    target = (history[-1] + 1) % num_items
    row = prompts.make_fields("movie", [title(h) for h in history], title(target))
    row.update(history_item_ids=history, target_item_id=target,
               target_timestamp=first_timestamp + i, user_id=str(i % 17), domain="movie")
    rows.append(row)
  return rows


def write_prepared(directory: str, *, num_items: int = 40, train: int = 3000, valid: int = 300,
                   test: int = 300, history_len: int = 10, min_len: int | None = None,
                   seed: int = 0) -> str:
  """items.tsv, train/valid/test(_5000).json, popularity.json (train targets), stats.json."""
  rng = np.random.default_rng(seed)
  splits, stamp = {}, 0
  for name, n in (("train", train), ("valid", valid), ("test", test)):
    splits[name] = rule_rows(n, num_items, history_len, rng, min_len, stamp)
    stamp += n
  return write_prepared_dir(directory, [title(i) for i in range(num_items)], splits)
