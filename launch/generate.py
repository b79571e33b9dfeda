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

from absl import flags, logging

from bigrec_jax import cli, parallel
from bigrec_jax.files import UserError
from bigrec_jax.generate.runner import ASSISTANTS, EXCLUDE_MODES, GenerateOptions, run

_INPUT = flags.DEFINE_string("input", None, "JSON list of rows with `instruction` and `input`.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the rows with `predict` are written.")
_MODEL = flags.DEFINE_string("model", None, "Base model: .gguf file or HF directory "
                             "(default: the embedded SmolLM2-135M-Instruct).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the tokenizer files, for "
                                 "a --model whose own are missing (default: the model's).")
_ADAPTER = flags.DEFINE_string("adapter", None, "LoRA adapter: a PEFT directory or a training "
                               "workdir with adapter/ (merged into the weights before decoding).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams (1 = greedy).")
_NUM_RETURN = flags.DEFINE_integer("num_return_sequences", None,
                                   "Predictions per row (default: num_beams).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Most generated tokens per prediction.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per batch (global, over all devices).")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "Score = log-prob / length ** this.")
_EARLY_STOPPING = flags.DEFINE_boolean("early_stopping", False,
                                       "Stop a row once it has num_beams finished hypotheses.")
_CONSTRAINED = flags.DEFINE_boolean("constrained", False, "Only generate catalog titles "
                                    "(prefix trie over --items; beyond the paper).")
_STOP_QUOTE = flags.DEFINE_boolean("stop_at_closing_quote", False, "End a prediction at the "
                                  "closing quote of its title, as if EOS came next (beyond the "
                                  "paper; the text is cut after the quote).")
_SHARE_PREFIX = flags.DEFINE_boolean("share_prompt_prefix", True, "Run the tokens every prompt "
                                    "opens with (the instruction) once per batch, not per row.")
_ITEMS = flags.DEFINE_string("items", None, "items.tsv (or its prepared-data directory) for "
                             "--constrained.")
_BUCKET = flags.DEFINE_integer("bucket_multiple", 32, "Prompts are padded to a multiple of this "
                               "(one compiled program per length).")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", 0, "Longest prompt in tokens (0: the "
                                   "model's context minus max_new_tokens).")
_TRUNCATE = flags.DEFINE_boolean("truncate_long_prompts", False, "Drop the oldest tokens of a "
                                 "too long prompt with a warning instead of failing.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_MATMUL_DTYPE = flags.DEFINE_enum("matmul_dtype", "", ["", "float32", "bfloat16"], "Operands of "
                                  "the weight matmuls ('' = --dtype), accumulated in float32; "
                                  "bfloat16 runs them on AMX on recent Xeon CPUs.")
_MESH = flags.DEFINE_list("mesh_shape", ["-1", "1", "1"], "Mesh (data, fsdp, tensor).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar over batches.")
# Catalog-aware decoding (generate/guide.py; with --constrained; off by default = the reference).
_RENORMALIZE = flags.DEFINE_boolean("renormalize", False, "Renormalise each constrained step's "
                                    "log-probs over the allowed trie children (a forced token "
                                    "costs 0).")
_EXCLUDE = flags.DEFINE_enum("exclude_history", "none", list(EXCLUDE_MODES), "Leave items the "
                             "row's user already had out of its trie: shown = history_item_ids, "
                             "all_past = every item of the user's earlier examples in --items' "
                             "prepared splits.")
_ASSISTANT = flags.DEFINE_enum("assistant", "none", list(ASSISTANTS), "Guide the beams with an "
                               "assistant's item probabilities (mostpop: popularity.json next to "
                               "--items; CF models: --assistant_scores).")
_ASSISTANT_SCORES = flags.DEFINE_string("assistant_scores", None, "A baseline's exported score "
                                        "matrix for the --input rows (baselines/<model>/"
                                        "scores_<split>.npy).")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "alpha: step score alpha * log p_LLM + "
                               "(1 - alpha) * log q_assistant (1 = LLM alone, 0 = assistant).")
_TEMPERATURE = flags.DEFINE_float("assistant_temperature", 1.0, "CF assistants: softmax of "
                                  "scores / this.")
_INIT_DISTRIBUTED = cli.define_multihost_flags()


def _check_flags() -> None:
  """Paths and numbers, before the model loads (cli.py: one message naming the flag)."""
  cli.input_file(_INPUT, _INPUT.value, "a JSON list of rows")
  cli.output_file(_OUTPUT, _OUTPUT.value)
  if _CONSTRAINED.value and not _ITEMS.value:
    raise UserError("--constrained needs --items (the catalog's items.tsv or its prepared-data "
                    "directory)")
  for flag in (_ITEMS, _MODEL, _ADAPTER):
    cli.input_path(flag, flag.value, required=False)
  for flag, low in ((_NUM_BEAMS, 1), (_NUM_RETURN, 1), (_MAX_NEW, 1), (_BATCH, 1), (_BUCKET, 1),
                    (_MAX_PROMPT, 0)):
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
  options = GenerateOptions(
      num_beams=_NUM_BEAMS.value,
      num_return_sequences=_NUM_RETURN.value or _NUM_BEAMS.value,
      max_new_tokens=_MAX_NEW.value, batch_size=_BATCH.value,
      length_penalty=_LENGTH_PENALTY.value, early_stopping=_EARLY_STOPPING.value,
      constrained=_CONSTRAINED.value, stop_at_closing_quote=_STOP_QUOTE.value,
      bucket_multiple=_BUCKET.value, share_prompt_prefix=_SHARE_PREFIX.value,
      max_prompt_len=_MAX_PROMPT.value, truncate_long_prompts=_TRUNCATE.value,
      progress=_PROGRESS.value, renormalize=_RENORMALIZE.value,
      exclude_history=_EXCLUDE.value, assistant=_ASSISTANT.value, guidance=_GUIDANCE.value,
      assistant_temperature=_TEMPERATURE.value)
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
