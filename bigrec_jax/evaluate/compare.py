"""Comparing pipeline runs: what the generated text looks like, and the ablation table.

`prediction_stats` says how often the best beam is one quoted title, a catalog title, and how
concentrated the predictions are (mode collapse shows as a large `top_share`). `ablation_table`
puts several pipeline workdirs side by side (NDCG@10 / HR@10 of every method on the test rows,
the generation statistics and the wall time per stage) and refuses runs whose test rows differ,
so every number in a column is measured on the same rows.
"""
from __future__ import annotations

import collections
import hashlib
import os
from typing import Mapping, Sequence

from bigrec_jax import files
from bigrec_jax.data import prepared, prompts
from bigrec_jax.files import UserError

STAGES = ("train", "generate", "baselines", "evaluate")


def parse_run(spec: str, source: str) -> tuple[str, str]:
  """`NAME=WORKDIR` -> (name, workdir); `source` names the flag or field in the error."""
  name, sep, workdir = spec.partition("=")
  if not sep or not name or not workdir:
    raise UserError(f"{source}: {spec!r} is not NAME=WORKDIR")
  return name, workdir


def prediction_stats(rows: Sequence[Mapping], titles: Sequence[str]) -> dict:
  """Fractions over rows of predict[0]: one quoted title, a catalog title; top-title share;
  history_repeat: the best beam is a title of the row's own history (`history_item_ids`), which
  in MovieLens is never the next item."""
  catalog = set(titles)
  best = [r["predict"][0] if r.get("predict") else "" for r in rows]
  parsed = [prompts.single_title(text) for text in best]
  n = max(len(rows), 1)
  counts = collections.Counter(prompts.unquote(t) for t in best)
  top_title, top_count = counts.most_common(1)[0] if counts else ("", 0)
  repeats = sum(p is not None and p in {titles[i] for i in r.get("history_item_ids", ())
                                        if 0 <= i < len(titles)}
                for p, r in zip(parsed, rows))
  return {"rows": len(rows),
          "single_title": sum(p is not None for p in parsed) / n,
          "catalog_title": sum(p is not None and p in catalog for p in parsed) / n,
          "distinct_titles": len(counts),
          "top_title": top_title, "top_share": top_count / n,
          "history_repeat": repeats / n}


def rows_fingerprint(rows: Sequence[Mapping]) -> str:
  """Identity of an evaluation set: its users, targets and timestamps in order."""
  h = hashlib.sha256()
  for r in rows:
    h.update(f"{r.get('user_id')}:{r.get('target_item_id')}:{r.get('target_timestamp')};".encode())
  return h.hexdigest()[:16]


def test_metrics(workdir: str, ev: Mapping | None = None) -> dict[str, dict]:
  """Method -> test metrics: the BIGRec variants of eval/metrics.json, then every baseline."""
  if ev is None:
    ev = files.read_json(os.path.join(workdir, "eval", "metrics.json"))
  methods = {name: m["test"] for name, m in ev["methods"].items()}
  base = os.path.join(workdir, "baselines")
  if files.isdir(base):
    for name in sorted(files.listdir(base)):
      path = os.path.join(base, name, "metrics.json")
      if files.exists(path):
        for method, m in files.read_json(path)["methods"].items():
          methods.setdefault(name if method == name.split("_")[0] else method, m["test"])
  return methods


def summarize_run(workdir: str) -> dict:
  """Test metrics of every method, generation statistics and stage times of one workdir."""
  metrics_path = os.path.join(workdir, "eval", "metrics.json")
  if not files.exists(metrics_path):
    raise UserError(f"{workdir}: no eval/metrics.json (run the pipeline's evaluate stage first)")
  ev = files.read_json(metrics_path)
  methods = test_metrics(workdir, ev)
  predictions = os.path.join(workdir, "predictions", "test.json")
  rows = files.read_json(predictions)
  titles = prepared.read_items(os.path.join(workdir, "data"))
  seconds = {}
  for stage in STAGES:
    marker = os.path.join(workdir, "stages", f"{stage}.json")
    if files.exists(marker):
      seconds[stage] = files.read_json(marker).get("seconds")
  return {"workdir": workdir, "methods": methods, "test_rows": ev["counts"]["test"]["rows"],
          "rows_fingerprint": rows_fingerprint(rows),
          "generation": prediction_stats(rows, titles), "seconds": seconds}


def ablation_table(runs: Sequence[tuple[str, str]],
                   methods: Sequence[str] = ("bigrec", "bigrec+pop", "bigrec+cf:sasrec",
                                             "mostpop", "sasrec"),
                   metric_k: int = 10) -> tuple[str, list[dict]]:
  """Markdown table over (name, workdir) runs; raises UserError when their test rows differ."""
  if not runs:
    raise UserError("no runs to compare")
  summaries = [summarize_run(workdir) for _, workdir in runs]
  first = summaries[0]["rows_fingerprint"]
  for (name, workdir), s in zip(runs, summaries):
    if s["rows_fingerprint"] != first:
      raise UserError(f"{workdir} ({name}): its test rows differ from {runs[0][1]}'s; an "
                      "ablation compares runs on the same rows")
  cols = [f"{m} NDCG@{metric_k} / HR@{metric_k}" for m in methods]
  head = (["run"] + cols + ["bigrec HR@1", "single title", "catalog title", "distinct titles",
                            "top title (share)", "history repeats"]
          + [f"{s} s" for s in STAGES])
  lines = [f"Test rows: {summaries[0]['test_rows']} (the same rows in every run).", "",
           "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for (name, _), s in zip(runs, summaries):
    cells = [name]
    for m in methods:
      v = s["methods"].get(m)
      cells.append("-" if v is None else
                   f"{v[f'NDCG@{metric_k}']:.4f} / {v[f'HR@{metric_k}']:.4f}")
    g = s["generation"]
    hr1 = s["methods"].get("bigrec", {}).get("HR@1")
    cells += ["-" if hr1 is None else f"{hr1:.4f}",
              f"{100 * g['single_title']:.1f}%", f"{100 * g['catalog_title']:.1f}%",
              str(g["distinct_titles"]), f"{g['top_title']} ({100 * g['top_share']:.1f}%)",
              f"{100 * g['history_repeat']:.1f}%"]
    cells += ["-" if s["seconds"].get(st) is None else f"{s['seconds'][st]:.0f}"
              for st in STAGES]
    lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
  return "\n".join(lines) + "\n", summaries


def markdown_cell(text: str) -> str:
  """`text` as one cell of a markdown table row: a free-text output (the reference recipe's beams
  can hold newlines and pipes) must not end the row or add columns."""
  return " ".join(text.split()).replace("|", "\\|")


# (BIGRec variant, baseline directory): the paper's claims, each on the same test rows.
PAIRED_CLAIMS = (("bigrec", "sasrec_fewshot"), ("bigrec", "gru4rec_fewshot"),
                 ("bigrec", "dros_fewshot"), ("bigrec+pop", "mostpop"),
                 ("bigrec+cf:sasrec", "sasrec"), ("bigrec+cf:dros", "dros"), ("bigrec", "mostpop"))


def paired_comparisons(workdir: str, pairs: Sequence[tuple[str, str]] = PAIRED_CLAIMS,
                       k: int = 10) -> list[dict]:
  """NDCG@k differences (BIGRec variant minus baseline) with paired bootstrap 95% intervals.

  Reads the per-row test ranks the evaluate stage (`eval/test_ranks.json`) and each baseline
  (`baselines/<name>/test_ranks.json`) write; pairs whose files are missing are skipped.
  """
  from bigrec_jax.evaluate.metrics import paired_bootstrap

  ours_path = os.path.join(workdir, "eval", "test_ranks.json")
  if not files.exists(ours_path):
    return []
  ours = files.read_json(ours_path)
  out = []
  for method, baseline in pairs:
    theirs_path = os.path.join(workdir, "baselines", baseline, "test_ranks.json")
    if method not in ours or not files.exists(theirs_path):
      continue
    theirs = files.read_json(theirs_path)
    if len(theirs) != len(ours[method]):
      raise UserError(f"{theirs_path}: {len(theirs)} test rows, but {ours_path} has "
                      f"{len(ours[method])}; a paired comparison needs the same rows")
    out.append({"method": method, "baseline": baseline,
                **paired_bootstrap(ours[method], theirs, k=k)})
  return out


def paired_table(comparisons: Sequence[Mapping]) -> str:
  """Markdown: one row per comparison, the difference and its interval, and who wins."""
  lines = ["| BIGRec variant | baseline | NDCG@10 difference | 95% interval | verdict |",
           "|---|---|---|---|---|"]
  for c in comparisons:
    verdict = ("better" if c["low"] > 0 else "worse" if c["high"] < 0 else "no clear difference")
    lines.append(f"| {c['method']} | {c['baseline']} | {c['diff']:+.4f} | "
                 f"[{c['low']:+.4f}, {c['high']:+.4f}] | {verdict} |")
  return "\n".join(lines) + "\n"
