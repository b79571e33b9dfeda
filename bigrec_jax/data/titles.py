"""Title cleaning, shared by the catalog, the prompts and grounding.

A title is stored once, cleaned, in items.tsv; every later stage uses that string, so the title a
prompt shows, the target a model learns and the text grounding embeds are the same.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

_CONTROL = re.compile(r"[\t\r\n\x0b\x0c]+")
# "Usual Suspects, The (1995)" -> article at the end before an optional "(year)" / "(a.k.a ...)".
_TRAILING_ARTICLE = re.compile(
    r"^(?P<name>.+?), (?P<article>The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El|Los|Las|Det|Den)"
    r"(?P<rest>(?: \(.*\))?)$")
TITLE_ARTICLE_STYLES = ("keep", "front")


def clean_title(raw: str) -> str:
  """Tabs/newlines become spaces; surrounding spaces and double quotes are stripped."""
  return _CONTROL.sub(" ", raw).strip(' "')


def move_article_to_front(title: str) -> str:
  """`Usual Suspects, The (1995)` -> `The Usual Suspects (1995)`; other titles unchanged."""
  m = _TRAILING_ARTICLE.match(title)
  if not m:
    return title
  article = m.group("article")
  sep = "" if article.endswith("'") else " "
  return f"{article}{sep}{m.group('name')}{m.group('rest')}"


def style_title(title: str, articles: str = "keep") -> str:
  """Applies the `--title_articles` choice to a cleaned title."""
  if articles == "keep":
    return title
  if articles == "front":
    return move_article_to_front(title)
  raise ValueError(f"title article style must be one of {TITLE_ARTICLE_STYLES}, got {articles!r}")


def title_problem(title: str) -> str | None:
  """Why a title cannot go into items.tsv or a prompt, or None when it is fine."""
  if not title:
    return "empty title"
  if _CONTROL.search(title):
    return "title contains a tab or newline"
  if title != title.strip(' "'):
    return "title has surrounding spaces or double quotes"
  return None


def title_group_ids(titles: Sequence[str]) -> np.ndarray:
  """For each item id, the smallest item id with the same title.

  Several ids can share a title (ML-100K remakes, Amazon editions); a prediction of that title
  is right for any of them, so evaluation compares groups, not ids.
  """
  first: dict[str, int] = {}
  return np.asarray([first.setdefault(t, i) for i, t in enumerate(titles)], dtype=np.int64)


def ids_by_title(titles: Sequence[str],
                 key: Callable[[str], str] | None = None) -> dict[str, list[int]]:
  """Each title (or `key(title)`) -> the item ids that carry it, in id order."""
  ids: dict[str, list[int]] = {}
  for i, t in enumerate(titles):
    ids.setdefault(t if key is None else key(t), []).append(i)
  return ids


def duplicate_titles(titles: Sequence[str]) -> dict[str, list[int]]:
  """Titles carried by more than one item id -> those ids."""
  return {t: v for t, v in ids_by_title(titles).items() if len(v) > 1}
