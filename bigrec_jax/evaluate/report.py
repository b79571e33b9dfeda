"""Writing evaluation results: metrics.json, a printed table and PNG plots, all atomically.

Plots use matplotlib's object API (Figure + Agg canvas), so no global pyplot state and no display.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from bigrec_jax import files
from bigrec_jax.files import atomic_path, write_json
from bigrec_jax.ground.gamma import GammaChoice


def write_metrics(path: str, metrics: dict) -> None:
  write_json(path, metrics)


def format_table(metrics: dict, split: str = "test") -> str:
  """Methods x NDCG@K/HR@K for one split, then the gammas each metric chose on validation."""
  ks = metrics["ks"]
  cols = [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks]
  methods = metrics["methods"]
  width = max(len("method"), *(len(m) for m in methods)) + 2
  counts = metrics["counts"][split]
  lines = [f"{split}: {counts['rows']} rows, {counts['empty_predictions']} empty predictions, "
           f"{metrics['num_items']} items (all-rank)",
           "method".ljust(width) + "".join(c.rjust(10) for c in cols)]
  for name, m in methods.items():
    lines.append(name.ljust(width) + "".join(f"{m[split][c]:10.4f}" for c in cols))
  tuned = {n: m for n, m in methods.items() if "gammas" in m}
  if tuned:
    lines.append("")
    lines.append("gammas chosen on valid per metric (pop/cf)")
    lines.append("method".ljust(width) + "".join(c.rjust(10) for c in cols))
    for name, m in tuned.items():
      cells = [f"{_g(m['gammas'][c]['pop'])}/{_g(m['gammas'][c]['cf'])}" for c in cols]
      lines.append(name.ljust(width) + "".join(c.rjust(10) for c in cells))
  return "\n".join(lines)


def _g(x: float) -> str:
  return f"{x:g}"


def _save(fig, path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(fig)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)


def plot_gamma_curves(path: str, choices: Mapping[str, GammaChoice], ks: Sequence[int],
                      metric: str = "NDCG") -> None:
  """Validation `metric@K` against gamma: one panel per tuned method, one line per K."""
  from matplotlib.figure import Figure

  if not choices:
    return
  fig = Figure(figsize=(5.0 * len(choices), 3.8), layout="constrained")
  axes = fig.subplots(1, len(choices), squeeze=False)[0]
  for ax, (name, choice) in zip(axes, choices.items()):
    x = np.asarray(choice.grid)
    for k in ks:
      ax.plot(x, choice.curves[f"{metric}@{k}"], label=f"@{k}", lw=1.2)
      best = choice.chosen[f"{metric}@{k}"][0 if choice.vary == "pop" else 1]
      ax.axvline(best, color=ax.lines[-1].get_color(), ls=":", lw=0.8)
    if x.max() > 0 and (x[x > 0].min() < 1):
      ax.set_xscale("symlog", linthresh=float(x[x > 0].min()))
    ax.set_xlim(float(x.min()), float(x.max()))
    ax.set_xlabel(f"gamma_{choice.vary}")
    ax.set_ylabel(f"{metric}@K (validation)")
    fixed_pop = choice.vary == "cf" and any(g[0] for g in choice.chosen.values())
    ax.set_title(name + (" (gamma_pop as chosen per metric)" if fixed_pop else ""), fontsize=9)
    ax.legend(fontsize=7)
  _save(fig, path)


def plot_popularity(path: str, counts: np.ndarray, recommended: Mapping[str, np.ndarray],
                    target_ids: np.ndarray, top_n: int = 10) -> None:
  """Training popularity of the top-`top_n` recommended items vs the true items (share per bin).

  Top-N rather than top-1: injection never changes the top-1 item (REFERENCE.md), only what follows.
  """
  from matplotlib.figure import Figure

  counts = np.asarray(counts)
  bins = np.unique(np.round(np.geomspace(1, max(2, counts.max() + 1), 30)))
  fig = Figure(figsize=(6.5, 4.0), layout="constrained")
  ax = fig.subplots()

  def hist(ids, label, **style):
    ids = np.asarray(ids).reshape(-1)
    ids = ids[ids >= 0]
    if ids.size:
      ax.hist(counts[ids] + 1, bins=bins, histtype="step", weights=np.full(ids.size, 1 / ids.size),
              label=label, **style)

  hist(target_ids, "ground truth", color="black", lw=2)
  for name, ids in recommended.items():
    hist(np.asarray(ids)[:, :top_n], f"{name} top-{min(top_n, np.shape(ids)[1])}", lw=1.2)
  ax.set_xscale("log")
  ax.set_xlabel("training interactions of the item + 1")
  ax.set_ylabel("share of items")
  ax.legend(fontsize=7)
  _save(fig, path)


def write_report(out_dir: str, result, popularity_counts: np.ndarray,
                 test_target_ids: np.ndarray) -> dict[str, str]:
  """metrics.json, gamma_curves.png, popularity.png in out_dir (plots first, metrics.json last)."""
  files.makedirs(out_dir)
  paths = {"gamma_curves": os.path.join(out_dir, "gamma_curves.png"),
           "popularity": os.path.join(out_dir, "popularity.png"),
           "metrics": os.path.join(out_dir, "metrics.json")}
  plot_gamma_curves(paths["gamma_curves"], result.choices, result.metrics["ks"])
  plot_popularity(paths["popularity"], popularity_counts, result.test_top_ids, test_target_ids)
  write_metrics(paths["metrics"], result.metrics)
  return paths
