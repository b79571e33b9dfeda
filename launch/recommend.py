"""Recommend catalog items for a user from the titles they liked, with a trained adapter.

  python launch/recommend.py --data_dir=runs/demo/data --adapter=runs/demo/train \
      --liked="Toy Story" --liked="Star Wars" --liked="Fargo" --k=10 --gamma_pop=1
  python launch/recommend.py --data_dir=... --adapter=... --interactive   # type titles

Prints the generated title(s) and the top-K real items (grounded by L2 distance between base-model
embeddings, optionally reweighted by popularity); titles already liked are left out. The model,
prompt and search flags are config fields (--config=FILE, default configs/default.py;
--config.generate.<field>=... sets them as well), checked by config.check.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402

from bigrec_jax import cli  # noqa: E402
from bigrec_jax.data import prompts  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file()
_DATA = flags.DEFINE_string("data_dir", None, "Prepared-data directory (items.tsv, popularity.json).")
_ADAPTER = flags.DEFINE_string("adapter", None, "PEFT adapter dir or training workdir (with adapter/).")
_LIKED = flags.DEFINE_multi_string("liked", [], "A title the user liked (repeat; oldest first).")
_K = flags.DEFINE_integer("k", 10, "How many items to recommend.")
_GAMMA = flags.DEFINE_float("gamma_pop", 0.0, "Popularity injection strength (0 = plain BIGRec).")
_INTERACTIVE = flags.DEFINE_bool("interactive", False, "Read liked titles from stdin, one per line.")
cli.define_flags_from({
    "model=model.path": "Base model (.gguf or HF dir; '': the embedded SmolLM2).",
    "tokenizer=model.tokenizer": "Directory with the tokenizer files, for a --model whose own "
                                 "are missing ('': the model's).",
    "data.prompt_template": "The prompt template the adapter was trained with.",
    "generate.num_beams": "Beam width.",
    "generate.max_new_tokens": "Generation budget in tokens.",
    "generate.constrained": "Only generate catalog titles.",
    # Catalog-aware decoding (with --constrained; generate/guide.py), as launch/generate.py.
    "generate.renormalize": "Renormalise each constrained step over the allowed trie children.",
    "generate.exclude_history": "Leave the liked titles out of the search's trie (shown = "
                                "all_past here).",
    "generate.assistant": "Guide the beams with popularity shares (mostpop: popularity.json of "
                          "--data_dir) or the model's history-free prior (llm_prior).",
    "generate.guidance": "alpha: 1 = the LLM alone, 0 = the assistant, > 1 (llm_prior) "
                         "contrastive.",
}, choices={"data.prompt_template": prompts.TEMPLATES, "generate.assistant": ["none", "mostpop", "llm_prior"]})


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass titles with --liked")
  cli.input_dir(_DATA, _DATA.value, "a directory written by launch/prepare_data.py")
  config = cli.config_of(_CONFIG, check=False)
  g = config.generate
  g.num_return_sequences = g.num_beams  # every beam is shown
  cli.check_config(config)
  cli.input_path(_ADAPTER, _ADAPTER.value, required=False)
  cli.input_path("--tokenizer", config.model.tokenizer, required=False)
  for flag, low in ((_K, 1), (_GAMMA, 0)):
    if flag.value < low:
      raise UserError(f"--{flag.name}={flag.value}: must be >= {low}")
  liked = list(_LIKED.value)
  if _INTERACTIVE.value:
    print("Type the titles you liked, one per line; an empty line ends the list.")
    for line in sys.stdin:
      if not line.strip():
        break
      liked.append(line.strip())
  from bigrec_jax.recommend import recommend

  rec = recommend(liked, _DATA.value, _ADAPTER.value, model_path=config.model.path or None,
                  k=_K.value, gamma_pop=_GAMMA.value, num_beams=g.num_beams,
                  max_new_tokens=g.max_new_tokens, constrained=g.constrained,
                  tokenizer=config.model.tokenizer or None, renormalize=g.renormalize,
                  search_exclusion=g.exclude_history, assistant=g.assistant,
                  guidance=g.guidance, prompt_template=config.data.prompt_template)
  for t in rec.unknown_history:
    print(f"note: {t!r} is not a catalog title; it is used in the prompt as written")
  print(f"generated: {rec.generated[0]!r}")
  print(f"{'rank':>4}  {'score':>8}  title")
  for r, (_, title, score) in enumerate(rec.items, 1):
    print(f"{r:>4}  {score:8.4f}  {title}")


if __name__ == "__main__":
  cli.run(main)
