"""Raw interaction logs -> the prepared-data directory (items.tsv, train/valid/test JSON, ...).

  python launch/prepare_data.py --dataset=ml-100k --out_dir=/tmp/ml100k      # embedded data
  python launch/prepare_data.py --dataset=ml-10m --out_dir=data/ml10m
      --interactions=ml-10M100K/ratings.dat --items=ml-10M100K/movies.dat
  python launch/prepare_data.py --dataset=amazon --out_dir=data/games --tfds
      --interactions=Video_Games_5.json.gz --items=meta_Video_Games.json.gz
"""
from __future__ import annotations

from absl import flags

from bigrec_jax import cli
from bigrec_jax.files import UserError
from bigrec_jax.data import prepare

_DATASET = flags.DEFINE_enum(
    "dataset", "ml-100k", list(prepare.DATASETS),
    "Which raw format to read (ml-100k is embedded; the others need --interactions and --items).")
_INTERACTIONS = flags.DEFINE_string(
    "interactions", None,
    "Interaction log. ml-100k: recbole ml-100k.inter (default: the embedded copy); ml-1m/ml-10m: "
    "ratings.dat; amazon: reviews JSON lines (.json or .json.gz).")
_ITEMS = flags.DEFINE_string(
    "items", None,
    "Item file. ml-100k: recbole ml-100k.item (default: the embedded copy); ml-1m/ml-10m: "
    "movies.dat; amazon: metadata JSON lines (2014 Python-literal or 2018 JSON).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory to write the prepared files into.")
_SAMPLE = flags.DEFINE_integer(
    "sample", -1, "Few-shot training set size: if >= 0, also write train_n{sample}_seed{seed}.json "
    "(training set shuffled with --seed, first N kept, as the reference). -1: none.")
_SEED = flags.DEFINE_integer("seed", 0, "Run seed of the few-shot sample (paper: 0, 1, 2).")
_HISTORY_LEN = flags.DEFINE_integer("history_len", 10, "Previous items shown in a prompt.")
_MIN_HISTORY = flags.DEFINE_integer(
    "min_history", None, "A target needs at least this many previous items. Default: the "
    "dataset's reference rule (10).")
_KEEP_LAST = flags.DEFINE_boolean(
    "keep_last_of_short_users", None, "Users with at most --min_history items still give one "
    "example (their last item). Default: true for amazon (reference game rule), false for MovieLens.")
_TARGET_RATING = flags.DEFINE_string(
    "target_rating_above", "default", "Only targets rated above this become examples (the history "
    "keeps every rating). 'default' and 'none': every target (the reference today); 3: only "
    "targets rated 4-5 (the reference's first commit).")
_DROP_EMPTY = flags.DEFINE_boolean(
    "drop_empty_history", False, "Drop examples whose history is empty (amazon users with one "
    "review; the reference keeps them).")
_VALID_TEST_SIZE = flags.DEFINE_integer(
    "valid_test_size", 5000, "Rows of valid_5000.json / test_5000.json (all rows when fewer).")
_EVAL_SEED = flags.DEFINE_integer("valid_test_seed", 42, "Seed of the valid/test samples (reference: 42).")
_TRAIN_FRACTION = flags.DEFINE_float("train_fraction", 0.8, "Earliest fraction of examples for training.")
_VALID_FRACTION = flags.DEFINE_float("valid_fraction", 0.1, "Next fraction for validation; test gets the rest.")
_TITLE_ARTICLES = flags.DEFINE_enum(
    "title_articles", "keep", ["keep", "front"], "MovieLens 'Usual Suspects, The (1995)': keep as given, or 'front' -> 'The Usual Suspects (1995)'.")
_APPEND_YEAR = flags.DEFINE_boolean(
    "append_year", False, "ml-100k only: append the release year, 'Toy Story (1995)' (recbole "
    "titles carry none, which leaves 22 titles shared by several movies).")
_DOMAIN = flags.DEFINE_string("domain", None, "Prompt wording, 'movie' or 'game'. Default: "
                              "movie for MovieLens, game for amazon.")
_ENCODING = flags.DEFINE_string("encoding", None, "Encoding of ml-1m/ml-10m .dat files "
                                "(default ISO-8859-1, as the reference).")
_TFDS = flags.DEFINE_boolean("tfds", False, "Also build the array_record TFDS dataset in OUT_DIR/tfds.")


def _check_flags() -> None:
  """Paths, names and numbers, before any file is read (cli.py: one message naming the flag)."""
  cli.output_dir(_OUT_DIR, _OUT_DIR.value)
  cli.input_file(_INTERACTIONS, _INTERACTIONS.value, required=False)
  cli.input_file(_ITEMS, _ITEMS.value, required=False)
  cli.encoding(_ENCODING, _ENCODING.value)
  if _TFDS.value:
    import importlib.util

    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise UserError("--tfds needs the tensorflow_datasets package (pip install "
                      "tensorflow-datasets array_record); without --tfds the JSON files suffice")
  if _DOMAIN.value is not None:
    from bigrec_jax.data import prompts

    cli.names(_DOMAIN, [_DOMAIN.value], prompts.DOMAINS)
  for flag, low in ((_VALID_TEST_SIZE, 1), (_HISTORY_LEN, 1), (_MIN_HISTORY, 1), (_SAMPLE, -1)):
    if flag.value is not None and flag.value < low:
      raise UserError(f"--{flag.name}={flag.value}: must be >= {low}")
  train, valid = _TRAIN_FRACTION.value, _VALID_FRACTION.value
  if not (0 < train and 0 <= valid and train + valid <= 1):
    raise UserError(f"--train_fraction={train} --valid_fraction={valid}: the train fraction must "
                    "be positive, the valid fraction >= 0, and they sum to at most 1 (test gets "
                    "the rest)")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  _check_flags()
  options = prepare.PrepareOptions(
      history_len=_HISTORY_LEN.value, min_history=_MIN_HISTORY.value,
      keep_last_of_short_users=_KEEP_LAST.value, target_rating_above=_TARGET_RATING.value,
      drop_empty_history=_DROP_EMPTY.value,
      train_fraction=_TRAIN_FRACTION.value, valid_fraction=_VALID_FRACTION.value,
      eval_sample_size=_VALID_TEST_SIZE.value, eval_sample_seed=_EVAL_SEED.value,
      few_shot_sample=_SAMPLE.value, few_shot_seed=_SEED.value,
      title_articles=_TITLE_ARTICLES.value, append_year=_APPEND_YEAR.value, domain=_DOMAIN.value,
      encoding=_ENCODING.value, build_tfds=_TFDS.value)
  stats = prepare.prepare(_DATASET.value, _OUT_DIR.value, _INTERACTIONS.value, _ITEMS.value, options)
  print(prepare.summary(stats, _OUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
