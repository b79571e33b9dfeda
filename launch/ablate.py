"""Puts finished pipeline runs side by side: the quality ablation table.

  python launch/ablate.py --run="reference recipe=runs/ref" --run="demo=runs/demo" \
      --out=runs/ablation.md

Each --run is NAME=WORKDIR of a pipeline run (its eval/metrics.json, predictions/test.json and
stage markers are read). Runs must have been evaluated on the same test rows (checked). Prints a
markdown table of NDCG@10 / HR@10 per method, how often the best beam is one quoted title and a
catalog title, the most frequent prediction, and the wall time per stage; --out also writes it
(atomically) with the numbers as JSON beside it (.json).
"""
from __future__ import annotations

import os

from absl import flags

from bigrec_jax import cli, files
from bigrec_jax.evaluate import compare
from bigrec_jax.files import UserError

_RUNS = flags.DEFINE_multi_string("run", [], "NAME=WORKDIR of a finished pipeline run; repeat.")
_OUT = flags.DEFINE_string("out", "", "Markdown file to write (plus OUT without .md + .json).")
_K = flags.DEFINE_integer("k", 10, "The cut-off K of the NDCG@K / HR@K columns.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  runs = []
  for spec in _RUNS.value:
    name, workdir = compare.parse_run(spec, "--run")
    cli.input_dir("--run", workdir)
    runs.append((name, workdir))
  if not runs:
    raise UserError("--run is required (at least one NAME=WORKDIR)")
  if _K.value < 1:
    raise UserError(f"--k={_K.value}: must be >= 1")
  if _OUT.value:
    cli.output_file(_OUT, _OUT.value)
    numbers = os.path.splitext(_OUT.value)[0] + ".json"
    if numbers == _OUT.value:
      raise UserError(f"--out={_OUT.value}: the numbers go to OUT without .md + .json, which is "
                      "this file; give a .md name")
    cli.output_file(_OUT, numbers)
  table, summaries = compare.ablation_table(runs, metric_k=_K.value)
  print(table)
  if _OUT.value:
    files.atomic_write(_OUT.value, table)
    files.write_json(os.path.splitext(_OUT.value)[0] + ".json",
                     [dict(s, name=name) for (name, _), s in zip(runs, summaries)])


if __name__ == "__main__":
  cli.run(main)
