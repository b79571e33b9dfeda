r"""BIGRec generation: beam search over prompts built from rows (reference inference.py).

  python launch/generate.py --input=/tmp/ml100k/test_5000.json \
      --output=/tmp/run/test_5000.predict.json --adapter=/tmp/run/train \
      [--model=path/to/model.gguf|hf_dir] [--num_beams=4] [--max_new_tokens=128] \
      [--constrained --items=/tmp/ml100k/items.tsv] [--stop_at_closing_quote] \
      [--renormalize] [--exclude_history=shown|all_past] \
      [--assistant=mostpop|llm_prior|sasrec|gru4rec|caser|dros --guidance=0.5 --assistant_scores=scores.npy]

The model, mesh, prompt and search flags are fields of the config (--config=FILE, default
configs/default.py; --config.generate.<field>=... sets them as well), as the pipeline's generate
stage reads them; config.check runs before the model loads.

Writes the input rows with `predict` (num_return_sequences texts after `Response:\n`, best
first) and `predict_scores` to --output, atomically.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags, logging  # noqa: E402

from bigrec_jax import cli, parallel  # noqa: E402
from bigrec_jax import config as config_lib  # noqa: E402
from bigrec_jax.data import prompts  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402
from bigrec_jax.generate.runner import ASSISTANTS, EXCLUDE_MODES, GenerateOptions, run  # noqa: E402

_CONFIG = cli.define_config_file()
_INPUT = flags.DEFINE_string("input", None, "JSON list of rows with `instruction` and `input` "
                             "(with --items, rows with `history_item_ids` are prompted from them).")
_OUTPUT = flags.DEFINE_string("output", None, "Where the rows with `predict` are written.")
_ADAPTER = flags.DEFINE_string("adapter", None, "LoRA adapter: a PEFT directory or a training "
                               "workdir with adapter/ (merged into the weights before decoding).")
_ITEMS = flags.DEFINE_string("items", None, "items.tsv (or its prepared-data directory) for "
                             "--constrained.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar over batches.")
_ASSISTANT_SCORES = flags.DEFINE_string("assistant_scores", None, "A baseline's exported score "
                                        "matrix for the --input rows (baselines/<model>/"
                                        "scores_<split>.npy).")
# The fields the pipeline's generate stage reads, defaults from the config.
cli.define_flags_from({
    "model=model.path": "Base model: .gguf file or HF directory ('': the embedded "
                        "SmolLM2-135M-Instruct).",
    "tokenizer=model.tokenizer": "Directory with the tokenizer files, for a --model whose own "
                                 "are missing ('': the model's).",
    "model.dtype": "Compute dtype.",
    "model.matmul_dtype": "Operands of the weight matmuls ('' = --dtype), accumulated in "
                          "float32; bfloat16 runs them on AMX / AVX512-BF16 CPUs; auto: "
                          "bfloat16 where the host multiplies it in hardware.",
    "mesh_shape=mesh.shape": "Mesh (data, fsdp, tensor).",
    "data.prompt_template": "The prompt template the adapter was trained with.",
    "generate.num_beams": "Beams (1 = greedy).",
    "generate.num_return_sequences": "Predictions per row (at most --num_beams; when not "
                                     "given, num_beams if that is fewer).",
    "generate.max_new_tokens": "Most generated tokens per prediction.",
    "generate.batch_size": "Prompts per batch (global, over all devices).",
    "generate.length_penalty": "Score = log-prob / length ** this.",
    "generate.early_stopping": "Stop a row once it has num_beams finished hypotheses.",
    "generate.constrained": "Only generate catalog titles (prefix trie over --items; beyond the "
                            "paper).",
    "generate.stop_at_closing_quote": "End a prediction at the closing quote of its title, as "
                                      "if EOS came next (beyond the paper; the text is cut after "
                                      "the quote).",
    "generate.share_prompt_prefix": "Run the tokens every prompt opens with (the instruction) "
                                    "once per batch, not per row.",
    "generate.bucket_multiple": "Prompts are padded to a multiple of this (one compiled program "
                                "per length).",
    "generate.max_prompt_len": "Longest prompt in tokens (0: the model's context minus "
                               "max_new_tokens).",
    "generate.truncate_long_prompts": "Drop the oldest tokens of a too long prompt with a "
                                      "warning instead of failing.",
    # Catalog-aware decoding (generate/guide.py; with --constrained; off by default).
    "generate.renormalize": "Renormalise each constrained step's log-probs over the allowed "
                            "trie children (a forced token costs 0).",
    "generate.exclude_history": "Leave items the row's user already had out of its trie: shown "
                                "= history_item_ids, all_past = every item of the user's "
                                "earlier examples in --items' prepared splits.",
    "generate.assistant": "Guide the beams with an assistant's item probabilities (mostpop: "
                          "popularity.json next to --items; llm_prior: the model's own titles "
                          "after a history-free prompt; CF models: --assistant_scores).",
    "generate.guidance": "alpha: step score alpha * log p_LLM + (1 - alpha) * log q_assistant "
                         "(1 = LLM alone, 0 = assistant; > 1 with llm_prior: contrastive).",
    "generate.assistant_temperature": "CF assistants and llm_prior: softmax of scores / this.",
    "generate.prior_rows": "llm_prior: average the model's titles over the prompts of this many "
                           "training rows (train.json next to --items; 0 = one history-free "
                           "prompt).",
}, choices={"generate.exclude_history": EXCLUDE_MODES, "generate.assistant": ASSISTANTS,
            "data.prompt_template": prompts.TEMPLATES})
_INIT_DISTRIBUTED = cli.define_multihost_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.input_file(_INPUT, _INPUT.value, "a JSON list of rows")
  cli.output_file(_OUTPUT, _OUTPUT.value)
  config = cli.config_of(_CONFIG, check=False)
  g = config.generate
  if not cli.given("generate.num_return_sequences"):
    g.num_return_sequences = min(g.num_return_sequences, g.num_beams)
  cli.check_config(config)
  if g.constrained and not _ITEMS.value:
    raise UserError("--constrained needs --items (the catalog's items.tsv or its prepared-data "
                    "directory)")
  for flag in (_ITEMS, _ADAPTER):
    cli.input_path(flag, flag.value, required=False)
  cli.input_path("--tokenizer", config.model.tokenizer, required=False)
  if _ASSISTANT_SCORES.value:
    cli.input_file(_ASSISTANT_SCORES, _ASSISTANT_SCORES.value, "a .npy score matrix")
  _INIT_DISTRIBUTED()
  options = config_lib.options(GenerateOptions, g, progress=_PROGRESS.value,
                               prompt_format=prompts.format_of(config.data))
  m = config.model
  with parallel.logical_rules(config.mesh.rules):
    summary = run(_INPUT.value, _OUTPUT.value, options, model_path=m.path or None,
                  adapter=_ADAPTER.value, items=_ITEMS.value, dtype=m.dtype,
                  mesh_shape=tuple(config.mesh.shape), matmul_dtype=m.matmul_dtype,
                  kernels=m.kernels, tokenizer=m.tokenizer or None,
                  assistant_scores=[_ASSISTANT_SCORES.value] if _ASSISTANT_SCORES.value else None)
  if parallel.is_main_process():
    logging.info("generation summary: %s", summary)
    print(f"wrote {summary['rows']} rows to {summary['output']} "
          f"({summary['seconds']} s generating, {summary['compiled_programs']} compiled programs)")


if __name__ == "__main__":
  cli.run(main)
