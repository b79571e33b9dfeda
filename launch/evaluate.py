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
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags

from bigrec_jax import cli, config as config_lib
from configs import default as default_config
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
_BEAM = flags.DEFINE_integer("beam", 0, "Which returned sequence of `predict` to ground (0: best).")
_POP_GAMMAS = flags.DEFINE_list("pop_gammas", [], "Popularity gamma grid (default: "
                                "ground.pop_gammas, 0..99 as the reference).")
_CF_GAMMAS = flags.DEFINE_list("cf_gammas", [], "CF gamma grid (default: ground.cf_gammas, "
                               "0,0.01..0.99,1..99).")
_EMBED_BATCH = flags.DEFINE_integer("embed_batch_size", 64, "Texts per embedding batch (the "
                                    "pipeline's ground.embed_batch_size is 16).")
# The options the pipeline sets with --config.ground.*: same names, defaults from the config.
_GROUND = default_config.get_config().ground
_OPT = cli.define_flags_from(_GROUND, {
    "ks": "Cut-offs K of NDCG@K and HR@K.",
    "beams": "Ground the first N returned sequences together (an extension; 1 = predict[0] "
             "only, the reference). Per row: D_r = L2 distances of beam r's embedding to every "
             "item, min-max normalised per row; combined = sum_r w_r * D_r with w_r = (1/(r+1)) "
             "/ (sum of 1/(j+1) over the row's non-empty beams j < N) (rows with fewer "
             "predictions use what they have). Gamma 0 ranks items by the combined distance; "
             "injection multiplies its per-row min-max by the popularity/CF weights as usual. "
             "--beams=1 is exactly the single-beam grounding. Not combined with --beam.",
    "both": "Also tune popularity + CF together (an extension).",
    "embedding_cache": "Catalog embedding cache directory ('' = $BIGREC_HOME/embeddings).",
    "query_batch": "Prediction rows per grounding batch (0: from a memory budget, "
                   "ground/kernel.py).",
    "gamma_batch": "Gammas evaluated together in the search.",
})
_KS, _CACHE, _QUERY_BATCH = _OPT["ks"], _OPT["embedding_cache"], _OPT["query_batch"]
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
  for flag, low in ((_EMBED_BATCH, 1), (_QUERY_BATCH, 0), (_OPT["gamma_batch"], 1)):
    if flag.value < low:
      raise UserError(f"--{flag.name}={flag.value}: must be >= {low}")
  if len(_MESH.value) != 3:
    raise UserError(f"--mesh_shape={','.join(_MESH.value)}: needs 3 sizes (data, fsdp, tensor), "
                    "e.g. -1,1,1")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  _check_flags()
  values = {name: flag.value for name, flag in _OPT.items()}
  values["ks"] = _numbers(_KS, int)
  values["pop_gammas"] = _numbers(_POP_GAMMAS, float) or _GROUND.pop_gammas
  values["cf_gammas"] = _numbers(_CF_GAMMAS, float) or _GROUND.cf_gammas
  evaluate_predictions(config_lib.options(
      EvaluateOptions, values,
      data_dir=_DATA_DIR.value, valid_predictions=_VALID.value, test_predictions=_TEST.value,
      out_dir=_OUT_DIR.value, model=_MODEL.value, tokenizer=_TOKENIZER.value,
      cf_names=_CF_NAMES.value, cf_valid_scores=_CF_VALID.value,
      cf_test_scores=_CF_TEST.value, beam=_BEAM.value, embed_batch_size=_EMBED_BATCH.value,
      mesh_shape=_numbers(_MESH, int), dtype=_DTYPE.value, progress=_PROGRESS.value))


if __name__ == "__main__":
  cli.run(main)
