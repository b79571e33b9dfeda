"""Generation statistics of the ablation table."""
from __future__ import annotations

import pytest

from bigrec_jax.data import prompts
from bigrec_jax.evaluate import compare


@pytest.mark.parametrize("text,title", [
    ('"Toy Story"', "Toy Story"), (' "Heat" ', "Heat"), ('"Toy Story", "Heat"', None),
    ('The user has watched "Heat"', None), ('"Toy Story', None), ('""', None), ("Heat", None)])
def test_single_title_accepts_exactly_one_quoted_title(text, title):
  assert prompts.single_title(text) == title


def test_prediction_stats_fractions_and_top_share():
  rows = [{"predict": ['"Heat"', '"x"']}, {"predict": ['"Heat"']}, {"predict": ['"Nope"']},
          {"predict": ['"Heat", "Toy Story"']}, {"predict": []}]
  s = compare.prediction_stats(rows, ["Heat", "Toy Story"])
  assert s["rows"] == 5
  assert s["single_title"] == pytest.approx(3 / 5)
  assert s["catalog_title"] == pytest.approx(2 / 5)
  assert s["top_title"] == "Heat" and s["top_share"] == pytest.approx(2 / 5)


def test_history_repeats():
  titles = ["Heat", "Toy Story", "Fargo"]
  rows = [{"predict": ['"Heat"', '"Fargo"'], "history_item_ids": [0], "output": '"Fargo"'},
          {"predict": ['"Fargo"'], "history_item_ids": [0, 1], "output": '"Fargo"'},
          {"predict": ['"Toy Story"'], "history_item_ids": [1], "output": '"Heat"'}]
  s = compare.prediction_stats(rows, titles)
  assert s["history_repeat"] == pytest.approx(2 / 3)


def test_a_free_text_top_title_stays_inside_its_table_cell(monkeypatch):
  """The reference recipe's best beams are free text: a newline or a pipe in the most frequent one
  must neither end the ablation row nor add a column."""
  echo = "The user should\nrecommend | this.\n"
  stats = compare.prediction_stats([{"predict": [echo]}, {"predict": [echo]}], ["Heat"])
  summary = {"methods": {}, "test_rows": 2, "rows_fingerprint": "x", "generation": stats,
             "seconds": {}}
  monkeypatch.setattr(compare, "summarize_run", lambda workdir: summary)
  table, _ = compare.ablation_table([("free text", "runs/x")])
  head, rule, row = table.strip().splitlines()[-3:]
  assert row.count(" | ") == head.count(" | ")
  assert "| The user should recommend \\| this. (100.0%) |" in row
