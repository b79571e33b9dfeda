r"""BIGRec generation: beam search over prompts built from rows (reference inference.py).

  python launch/generate.py --input=/tmp/ml100k/test_5000.json \
      --output=/tmp/run/test_5000.predict.json --adapter=/tmp/run/train \
      [--model=path/to/model.gguf|hf_dir] [--num_beams=4] [--max_new_tokens=128] \
      [--constrained --items=/tmp/ml100k/items.tsv] [--stop_at_closing_quote] \
      [--renormalize] [--exclude_history=shown|all_past] \
      [--assistant=mostpop|sasrec|gru4rec|caser|dros --guidance=0.5 --assistant_scores=scores.npy]

Writes the input rows with `predict` (num_return_sequences texts after `Response:\n`, best
first) and `predict_scores` to --output, atomically.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags, logging

from bigrec_jax import cli, config as config_lib, parallel
from configs import default as default_config
from bigrec_jax.data import prompts
from bigrec_jax.files import UserError
from bigrec_jax.generate.runner import ASSISTANTS, EXCLUDE_MODES, GenerateOptions, run

_INPUT = flags.DEFINE_string("input", None, "JSON list of rows with `instruction` and `input` "
                             "(with --items, rows with `history_item_ids` are prompted from them).")
_OUTPUT = flags.DEFINE_string("output", None, "Where the rows with `predict` are written.")
_MODEL = flags.DEFINE_string("model", None, "Base model: .gguf file or HF directory "
                             "(default: the embedded SmolLM2-135M-Instruct).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the tokenizer files, for "
                                 "a --model whose own are missing (default: the model's).")
_ADAPTER = flags.DEFINE_string("adapter", None, "LoRA adapter: a PEFT directory or a training "
                               "workdir with adapter/ (merged into the weights before decoding).")
_NUM_RETURN = flags.DEFINE_integer("num_return_sequences", None,
                                   "Predictions per row (default: num_beams).")
_ITEMS = flags.DEFINE_string("items", None, "items.tsv (or its prepared-data directory) for "
                             "--constrained.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_MATMUL_DTYPE = flags.DEFINE_enum("matmul_dtype", "", ["", "float32", "bfloat16"], "Operands of "
                                  "the weight matmuls ('' = --dtype), accumulated in float32; "
                                  "bfloat16 runs them on AMX on recent Xeon CPUs.")
_MESH = flags.DEFINE_list("mesh_shape", ["-1", "1", "1"], "Mesh (data, fsdp, tensor).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar over batches.")
_ASSISTANT_SCORES = flags.DEFINE_string("assistant_scores", None, "A baseline's exported score "
                                        "matrix for the --input rows (baselines/<model>/"
                                        "scores_<split>.npy).")
# The options the pipeline sets with --config.generate.*: same names, defaults from the config.
_OPT = cli.define_flags_from(default_config.get_config().generate, {
    "num_beams": "Beams (1 = greedy).",
    "max_new_tokens": "Most generated tokens per prediction.",
    "batch_size": "Prompts per batch (global, over all devices).",
    "length_penalty": "Score = log-prob / length ** this.",
    "early_stopping": "Stop a row once it has num_beams finished hypotheses.",
    "constrained": "Only generate catalog titles (prefix trie over --items; beyond the paper).",
    "stop_at_closing_quote": "End a prediction at the closing quote of its title, as if EOS "
                             "came next (beyond the paper; the text is cut after the quote).",
    "share_prompt_prefix": "Run the tokens every prompt opens with (the instruction) once per "
                           "batch, not per row.",
    "bucket_multiple": "Prompts are padded to a multiple of this (one compiled program per "
                       "length).",
    "max_prompt_len": "Longest prompt in tokens (0: the model's context minus max_new_tokens).",
    "truncate_long_prompts": "Drop the oldest tokens of a too long prompt with a warning "
                             "instead of failing.",
    # Catalog-aware decoding (generate/guide.py; with --constrained; off by default).
    "renormalize": "Renormalise each constrained step's log-probs over the allowed trie "
                   "children (a forced token costs 0).",
    "exclude_history": "Leave items the row's user already had out of its trie: shown = "
                       "history_item_ids, all_past = every item of the user's earlier examples "
                       "in --items' prepared splits.",
    "assistant": "Guide the beams with an assistant's item probabilities (mostpop: "
                 "popularity.json next to --items; CF models: --assistant_scores).",
    "guidance": "alpha: step score alpha * log p_LLM + (1 - alpha) * log q_assistant (1 = LLM "
                "alone, 0 = assistant).",
    "assistant_temperature": "CF assistants: softmax of scores / this.",
}, choices={"exclude_history": EXCLUDE_MODES, "assistant": ASSISTANTS})
_NUM_BEAMS, _CONSTRAINED = _OPT["num_beams"], _OPT["constrained"]
_TEMPLATE = flags.DEFINE_enum("prompt_template", "alpaca", list(prompts.TEMPLATES), "The prompt "
                              "template the adapter was trained with (data.prompt_template).")
_INIT_DISTRIBUTED = cli.define_multihost_flags()


def _check_flags() -> None:
  """Paths and numbers, before the model loads (cli.py: one message naming the flag)."""
  cli.input_file(_INPUT, _INPUT.value, "a JSON list of rows")
  cli.output_file(_OUTPUT, _OUTPUT.value)
  if _CONSTRAINED.value and not _ITEMS.value:
    raise UserError("--constrained needs --items (the catalog's items.tsv or its prepared-data "
                    "directory)")
  for flag in (_ITEMS, _MODEL, _ADAPTER, _TOKENIZER):
    cli.input_path(flag, flag.value, required=False)
  for flag, low in ((_NUM_BEAMS, 1), (_NUM_RETURN, 1), (_OPT["max_new_tokens"], 1),
                    (_OPT["batch_size"], 1), (_OPT["bucket_multiple"], 1),
                    (_OPT["max_prompt_len"], 0)):
    if flag.value is not None and flag.value < low:
      raise UserError(f"--{flag.name}={flag.value}: must be >= {low}")
  if _ASSISTANT_SCORES.value:
    cli.input_file(_ASSISTANT_SCORES, _ASSISTANT_SCORES.value, "a .npy score matrix")
  if (_NUM_RETURN.value or 0) > _NUM_BEAMS.value:
    raise UserError(f"--num_return_sequences={_NUM_RETURN.value} cannot exceed "
                    f"--num_beams={_NUM_BEAMS.value}")
  if len(_MESH.value) != 3:
    raise UserError(f"--mesh_shape={','.join(_MESH.value)}: needs 3 sizes (data, fsdp, tensor), "
                    "e.g. -1,1,1")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  _check_flags()
  try:
    mesh_shape = [int(x) for x in _MESH.value]
  except ValueError:
    raise UserError(f"--mesh_shape: expected integers, got {_MESH.value}") from None
  _INIT_DISTRIBUTED()
  options = config_lib.options(
      GenerateOptions, {name: flag.value for name, flag in _OPT.items()},
      num_return_sequences=_NUM_RETURN.value or _NUM_BEAMS.value, progress=_PROGRESS.value,
      prompt_format=prompts.PromptFormat(_TEMPLATE.value))
  summary = run(_INPUT.value, _OUTPUT.value, options, model_path=_MODEL.value,
                adapter=_ADAPTER.value, items=_ITEMS.value, dtype=_DTYPE.value,
                mesh_shape=mesh_shape, matmul_dtype=_MATMUL_DTYPE.value,
                tokenizer=_TOKENIZER.value,
                assistant_scores=[_ASSISTANT_SCORES.value] if _ASSISTANT_SCORES.value else None)
  if parallel.is_main_process():
    logging.info("generation summary: %s", summary)
    print(f"wrote {summary['rows']} rows to {summary['output']} "
          f"({summary['seconds']} s generating, {summary['compiled_programs']} compiled programs)")


if __name__ == "__main__":
  cli.run(main)
