r"""Grounding and evaluation (BIGRec step 2): embed, ground (plain, +popularity, +CF), metrics.

  python launch/evaluate.py --data_dir=/tmp/ml100k --out_dir=/tmp/run/eval \
      --valid_predictions=/tmp/run/valid_5000.predict.json \
      --test_predictions=/tmp/run/test_5000.predict.json \
      [--model=path/to/model.gguf|hf_dir] [--cf_names=sasrec \
      --cf_valid_scores=sasrec_valid.npy --cf_test_scores=sasrec_test.npy]

Writes OUT_DIR/metrics.json (last, atomically), gamma_curves.png, popularity.png and
test_top_items.json, and prints the results table.
"""
from __future__ import annotations

import os

from absl import flags

from bigrec_jax import cli
from bigrec_jax.evaluate.run import EvaluateOptions, evaluate_predictions
from bigrec_jax.files import UserError

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared-data directory (items.tsv, popularity.json).")
_VALID = flags.DEFINE_string("valid_predictions", None, "Generated valid rows (JSON list with `predict`).")
_TEST = flags.DEFINE_string("test_predictions", None, "Generated test rows (JSON list with `predict`).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where metrics.json and the plots go.")
_MODEL = flags.DEFINE_string("model", None, "Base model for embeddings: .gguf file or HF directory "
                             "(no adapter: the reference embeds with the base model). Default: embedded SmolLM2.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the tokenizer files, for "
                                 "a --model whose own are missing (default: the model's).")
_CF_NAMES = flags.DEFINE_list("cf_names", [], "Names of CF score sources, e.g. sasrec,dros.")
_CF_VALID = flags.DEFINE_list("cf_valid_scores", [], "Per source: [valid rows, items] .npy scores.")
_CF_TEST = flags.DEFINE_list("cf_test_scores", [], "Per source: [test rows, items] .npy scores.")
_KS = flags.DEFINE_list("ks", ["1", "3", "5", "10", "20", "50"], "Cut-offs K of NDCG@K and HR@K.")
_BEAM = flags.DEFINE_integer("beam", 0, "Which returned sequence of `predict` to ground (0: best).")
_BEAMS = flags.DEFINE_integer(
    "beams", 1, "Ground the first N returned sequences together (an extension; 1 = predict[0] "
    "only, the reference). Per row: D_r = L2 distances of beam r's embedding to every item, "
    "min-max normalised per row; combined = sum_r w_r * D_r with w_r = (1/(r+1)) / (sum of "
    "1/(j+1) over the row's non-empty beams j < N) (rows with fewer predictions use what they "
    "have). Gamma 0 ranks items by the combined distance; injection multiplies its per-row "
    "min-max by the popularity/CF weights as usual. --beams=1 is exactly the single-beam "
    "grounding. Not combined with --beam.")
_POP_GAMMAS = flags.DEFINE_list("pop_gammas", [], "Popularity gamma grid (default 0..99, as the reference).")
_CF_GAMMAS = flags.DEFINE_list("cf_gammas", [], "CF gamma grid (default 0,0.01..0.99,1..99).")
_BOTH = flags.DEFINE_boolean("both", True, "Also tune popularity + CF together (an extension).")
_CACHE = flags.DEFINE_string("embedding_cache", None, "Catalog embedding cache directory "
                             "(default $BIGREC_HOME/embeddings).")
_EMBED_BATCH = flags.DEFINE_integer("embed_batch_size", 64, "Texts per embedding batch.")
_QUERY_BATCH = flags.DEFINE_integer("query_batch", None, "Prediction rows per grounding batch "
                                     "(default: from a memory budget, ground/kernel.py).")
_GAMMA_BATCH = flags.DEFINE_integer("gamma_batch", 4, "Gammas evaluated together in the search.")
_MESH = flags.DEFINE_list("mesh_shape", ["-1", "1", "1"], "Mesh (data, fsdp, tensor); the item "
                          "table is sharded over all of it.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Embedding compute dtype.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")


def _numbers(flag, kind):
  try:
    return [kind(x) for x in flag.value]
  except ValueError:
    raise UserError(f"--{flag.name}: expected {kind.__name__} values, got {flag.value}") from None


def _check_flags() -> None:
  """Paths and numbers, before the model loads (cli.py: one message naming the flag)."""
  cli.input_dir(_DATA_DIR, _DATA_DIR.value, "a prepared-data directory")
  cli.input_file(_VALID, _VALID.value, "a JSON list of generated rows")
  cli.input_file(_TEST, _TEST.value, "a JSON list of generated rows")
  cli.output_dir(_OUT_DIR, _OUT_DIR.value)
  cli.output_dir(_CACHE, _CACHE.value, required=False)
  for flag in (_CF_VALID, _CF_TEST):
    for path in flag.value:
      cli.input_file(flag, path, "a .npy score matrix")
  for flag in (_MODEL, _TOKENIZER):
    cli.input_path(flag, flag.value, required=False)
  for flag in (_EMBED_BATCH, _QUERY_BATCH, _GAMMA_BATCH):
    if flag.value is not None and flag.value < 1:
      raise UserError(f"--{flag.name}={flag.value}: must be >= 1")
  if len(_MESH.value) != 3:
    raise UserError(f"--mesh_shape={','.join(_MESH.value)}: needs 3 sizes (data, fsdp, tensor), "
                    "e.g. -1,1,1")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  _check_flags()
  grids = {}
  if _POP_GAMMAS.value:
    grids["pop_gammas"] = _numbers(_POP_GAMMAS, float)
  if _CF_GAMMAS.value:
    grids["cf_gammas"] = _numbers(_CF_GAMMAS, float)
  evaluate_predictions(EvaluateOptions(
      data_dir=_DATA_DIR.value, valid_predictions=_VALID.value, test_predictions=_TEST.value,
      out_dir=_OUT_DIR.value, model=_MODEL.value, tokenizer=_TOKENIZER.value,
      cf_names=_CF_NAMES.value,
      cf_valid_scores=_CF_VALID.value, cf_test_scores=_CF_TEST.value, ks=_numbers(_KS, int),
      beam=_BEAM.value, beams=_BEAMS.value, both=_BOTH.value, embedding_cache=_CACHE.value,
      embed_batch_size=_EMBED_BATCH.value, query_batch=_QUERY_BATCH.value,
      gamma_batch=_GAMMA_BATCH.value, mesh_shape=_numbers(_MESH, int), dtype=_DTYPE.value,
      progress=_PROGRESS.value, **grids))


if __name__ == "__main__":
  cli.run(main)
