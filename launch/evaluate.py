r"""Grounding and evaluation (BIGRec step 2): embed, ground (plain, +popularity, +CF), metrics.

  python launch/evaluate.py --data_dir=/tmp/ml100k --out_dir=/tmp/run/eval \
      --valid_predictions=/tmp/run/valid_5000.predict.json \
      --test_predictions=/tmp/run/test_5000.predict.json \
      [--model=path/to/model.gguf|hf_dir] [--cf_names=sasrec \
      --cf_valid_scores=sasrec_valid.npy --cf_test_scores=sasrec_test.npy]

The model, mesh and grounding flags are fields of the config (--config=FILE, default
configs/default.py; --config.ground.<field>=... sets them as well), as the pipeline's evaluate
stage reads them; config.check runs before the model loads.

Writes OUT_DIR/metrics.json (last, atomically), gamma_curves.png, popularity.png and
test_top_items.json, and prints the results table.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402

from bigrec_jax import cli, parallel  # noqa: E402
from bigrec_jax import config as config_lib  # noqa: E402
from bigrec_jax.evaluate.run import EvaluateOptions, evaluate_predictions  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file()
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared-data directory (items.tsv, popularity.json).")
_VALID = flags.DEFINE_string("valid_predictions", None, "Generated valid rows (JSON list with `predict`).")
_TEST = flags.DEFINE_string("test_predictions", None, "Generated test rows (JSON list with `predict`).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where metrics.json and the plots go.")
_CF_NAMES = flags.DEFINE_list("cf_names", [], "Names of CF score sources, e.g. sasrec,dros.")
_CF_VALID = flags.DEFINE_list("cf_valid_scores", [], "Per source: [valid rows, items] .npy scores.")
_CF_TEST = flags.DEFINE_list("cf_test_scores", [], "Per source: [test rows, items] .npy scores.")
_BEAM = flags.DEFINE_integer("beam", 0, "Which returned sequence of `predict` to ground (0: best).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")
# The fields the pipeline's evaluate stage reads, defaults from the config.
cli.define_flags_from({
    "model=model.path": "Base model for embeddings: .gguf file or HF directory (no adapter: "
                        "the reference embeds with the base model; '': the embedded SmolLM2).",
    "tokenizer=model.tokenizer": "Directory with the tokenizer files, for a --model whose own "
                                 "are missing ('': the model's).",
    "model.dtype": "Embedding compute dtype.",
    "mesh_shape=mesh.shape": "Mesh (data, fsdp, tensor); the item table is sharded over all of "
                             "it.",
    "ground.ks": "Cut-offs K of NDCG@K and HR@K.",
    "ground.pop_gammas": "Popularity gamma grid (the reference's 0..99).",
    "ground.cf_gammas": "CF gamma grid (the reference's 0,0.01..0.99,1..99).",
    "ground.beams": "Ground the first N returned sequences together, each beam's min-max L2 "
                    "distances weighted by 1/(rank+1) (an extension; 1 = predict[0] only, the "
                    "reference; README, 'Several beams per row'). Not combined with --beam.",
    "ground.both": "Also tune popularity + CF together (an extension).",
    "ground.embedding_cache": "Catalog embedding cache directory ('' = $BIGREC_HOME/embeddings).",
    "ground.embed_batch_size": "Texts per embedding batch.",
    "ground.query_batch": "Prediction rows per grounding batch (0: from a memory budget, "
                          "ground/kernel.py).",
    "ground.gamma_batch": "Gammas evaluated together in the search.",
})


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.input_dir(_DATA_DIR, _DATA_DIR.value, "a prepared-data directory")
  cli.input_file(_VALID, _VALID.value, "a JSON list of generated rows")
  cli.input_file(_TEST, _TEST.value, "a JSON list of generated rows")
  cli.output_dir(_OUT_DIR, _OUT_DIR.value)
  config = cli.config_of(_CONFIG)  # config.check, before any heavy work
  cli.output_dir("--embedding_cache", config.ground.embedding_cache, required=False)
  cli.input_path("--tokenizer", config.model.tokenizer, required=False)
  for flag in (_CF_VALID, _CF_TEST):
    for path in flag.value:
      cli.input_file(flag, path, "a .npy score matrix")
  m = config.model
  with parallel.logical_rules(config.mesh.rules):
    evaluate_predictions(config_lib.options(
        EvaluateOptions, config.ground,
        data_dir=_DATA_DIR.value, valid_predictions=_VALID.value, test_predictions=_TEST.value,
        out_dir=_OUT_DIR.value, model=m.path or None, tokenizer=m.tokenizer or None,
        cf_names=_CF_NAMES.value, cf_valid_scores=_CF_VALID.value,
        cf_test_scores=_CF_TEST.value, beam=_BEAM.value, mesh_shape=tuple(config.mesh.shape),
        dtype=m.dtype, kernels=m.kernels, progress=_PROGRESS.value))


if __name__ == "__main__":
  cli.run(main)
