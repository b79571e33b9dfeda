"""Recommend catalog items for a user from the titles they liked, with a trained adapter.

  python launch/recommend.py --data_dir=runs/demo/data --adapter=runs/demo/train \
      --liked="Toy Story" --liked="Star Wars" --liked="Fargo" --k=10 --gamma_pop=1
  python launch/recommend.py --data_dir=... --adapter=... --interactive   # type titles

Prints the generated title(s) and the top-K real items (grounded by L2 distance between base-model
embeddings, optionally reweighted by popularity); titles already liked are left out.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags

from bigrec_jax import cli
from bigrec_jax.files import UserError

_DATA = flags.DEFINE_string("data_dir", None, "Prepared-data directory (items.tsv, popularity.json).")
_ADAPTER = flags.DEFINE_string("adapter", None, "PEFT adapter dir or training workdir (with adapter/).")
_MODEL = flags.DEFINE_string("model", None, "Base model (.gguf or HF dir); default: embedded SmolLM2.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the tokenizer files, for "
                                 "a --model whose own are missing (default: the model's).")
_LIKED = flags.DEFINE_multi_string("liked", [], "A title the user liked (repeat; oldest first).")
_K = flags.DEFINE_integer("k", 10, "How many items to recommend.")
_GAMMA = flags.DEFINE_float("gamma_pop", 0.0, "Popularity injection strength (0 = plain BIGRec).")
_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beam width.")
_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Generation budget in tokens.")
_CONSTRAINED = flags.DEFINE_bool("constrained", False, "Only generate catalog titles.")
_INTERACTIVE = flags.DEFINE_bool("interactive", False, "Read liked titles from stdin, one per line.")
# Catalog-aware decoding (with --constrained; generate/guide.py), as launch/generate.py.
_RENORMALIZE = flags.DEFINE_bool("renormalize", False, "Renormalise each constrained step over "
                                 "the allowed trie children.")
_EXCLUDE = flags.DEFINE_enum("exclude_history", "none", ["none", "shown", "all_past"], "Leave the "
                             "liked titles out of the search's trie (shown = all_past here).")
_ASSISTANT = flags.DEFINE_enum("assistant", "none", ["none", "mostpop"], "Guide the beams with "
                               "popularity shares (popularity.json of --data_dir).")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "alpha: 1 = the LLM alone, 0 = the assistant.")
_TEMPLATE = flags.DEFINE_enum("prompt_template", "alpaca", ["alpaca", "chatml"], "The prompt "
                              "template the adapter was trained with (data.prompt_template).")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass titles with --liked")
  cli.input_dir(_DATA, _DATA.value, "a directory written by launch/prepare_data.py")
  for flag in (_ADAPTER, _MODEL, _TOKENIZER):
    cli.input_path(flag, flag.value, required=False)
  for flag, low in ((_K, 1), (_BEAMS, 1), (_NEW, 1), (_GAMMA, 0)):
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

  rec = recommend(liked, _DATA.value, _ADAPTER.value, model_path=_MODEL.value, k=_K.value,
                  gamma_pop=_GAMMA.value, num_beams=_BEAMS.value, max_new_tokens=_NEW.value,
                  constrained=_CONSTRAINED.value, tokenizer=_TOKENIZER.value,
                  renormalize=_RENORMALIZE.value, search_exclusion=_EXCLUDE.value,
                  assistant=_ASSISTANT.value, guidance=_GUIDANCE.value,
                  prompt_template=_TEMPLATE.value)
  for t in rec.unknown_history:
    print(f"note: {t!r} is not a catalog title; it is used in the prompt as written")
  print(f"generated: {rec.generated[0]!r}")
  print(f"{'rank':>4}  {'score':>8}  title")
  for r, (_, title, score) in enumerate(rec.items, 1):
    print(f"{r:>4}  {score:8.4f}  {title}")


if __name__ == "__main__":
  cli.run(main)
