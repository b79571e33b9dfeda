"""Amazon review readers (2014 and 2018 releases): JSON-lines reviews plus item metadata.

As in the reference, items without a usable title are dropped, and so are the reviews of them;
reviews without a rating or time are skipped. Every drop is counted in `RawLog.dropped`.
The catalog is the titled items that have a kept review, numbered by first appearance in the
review file. Metadata lines may be strict JSON (2018) or Python literals (2014 `meta_*.json`).
"""
from __future__ import annotations

import ast
import json
from typing import Any

from bigrec_jax.data import raw, titles as titles_lib
from bigrec_jax.files import UserError

MIN_TITLE_CHARS = 2  # the reference keeps titles with len(title) > 1


def _record(path: str, lineno: int, text: str, allow_python_literal: bool) -> dict[str, Any]:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    value = None
    if allow_python_literal:
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if value is None:
      raise UserError(f"{path}:{lineno}: not a JSON object ({e.msg} at column {e.colno})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(value).__name__}")
  return value


def _string_field(path: str, lineno: int, record: dict[str, Any], key: str) -> str:
  value = record.get(key)
  if not isinstance(value, str) or not value.strip():
    raise UserError(f"{path}:{lineno}: missing or empty {key!r}")
  return value.strip()


def read_titles(meta_path: str, min_title_chars: int = MIN_TITLE_CHARS) -> tuple[dict[str, str], int]:
  """{asin: cleaned title} for items with a usable title, and how many items had none."""
  found: dict[str, str] = {}
  untitled: set[str] = set()
  for lineno, text in raw.numbered_lines(meta_path, "utf-8", "metadata", final_newline=False):
    record = _record(meta_path, lineno, text, allow_python_literal=True)
    asin = _string_field(meta_path, lineno, record, "asin")
    title = record.get("title")
    title = titles_lib.clean_title(title) if isinstance(title, str) else ""
    if len(title) >= min_title_chars:
      found.setdefault(asin, title)
    else:
      untitled.add(asin)
  return found, len(untitled - set(found))


def read_amazon(reviews_path: str, meta_path: str, *, name: str = "amazon",
                min_title_chars: int = MIN_TITLE_CHARS) -> raw.RawLog:
  """Reviews (`reviewerID, asin, overall, unixReviewTime`) joined with metadata titles."""
  title_of, untitled = read_titles(meta_path, min_title_chars)
  raw.require_file(reviews_path, "reviews")
  index: dict[str, int] = {}
  asins: list[str] = []
  users, items, ratings, stamps = [], [], [], []
  dropped = {"items_without_title": untitled, "reviews_of_items_without_title": 0,
             "reviews_without_rating_or_time": 0}
  for lineno, text in raw.numbered_lines(reviews_path, "utf-8", "reviews", final_newline=False):
    record = _record(reviews_path, lineno, text, allow_python_literal=False)
    user = _string_field(reviews_path, lineno, record, "reviewerID")
    asin = _string_field(reviews_path, lineno, record, "asin")
    if asin not in title_of:
      dropped["reviews_of_items_without_title"] += 1
      continue
    if record.get("overall") is None or record.get("unixReviewTime") is None:
      dropped["reviews_without_rating_or_time"] += 1
      continue
    rating = raw.parse_float(reviews_path, lineno, "overall", str(record["overall"]))
    stamp = raw.parse_int(reviews_path, lineno, "unixReviewTime", str(record["unixReviewTime"]))
    if asin not in index:
      index[asin] = len(asins)
      asins.append(asin)
    users.append(user)
    items.append(index[asin])
    ratings.append(rating)
    stamps.append(stamp)
  return raw.make_log(name, asins, [title_of[a] for a in asins], users, items, ratings, stamps,
                      {"interactions": reviews_path, "items": meta_path}, dropped)
