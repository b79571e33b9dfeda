"""Raw interaction logs -> the prepared-data directory (items.tsv, train/valid/test JSON, ...).

  python launch/prepare_data.py --dataset=ml-100k --out_dir=/tmp/ml100k      # embedded data
  python launch/prepare_data.py --dataset=ml-10m --out_dir=data/ml10m
      --interactions=ml-10M100K/ratings.dat --items=ml-10M100K/movies.dat
  python launch/prepare_data.py --dataset=amazon --out_dir=data/games --tfds
      --interactions=Video_Games_5.json.gz --items=meta_Video_Games.json.gz
  python launch/prepare_data.py --config=configs/demo.py --out_dir=runs/data   # as the demo does

Every flag but --out_dir, --keep_last_of_short_users and --tfds is a field of the config's data
section (--config=FILE, default configs/default.py; --config.data.<field>=... sets it as well),
the fields the pipeline's prepare stage reads; they are checked by config.check before any file
is read.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402

from bigrec_jax import cli, config as config_lib  # noqa: E402
from bigrec_jax.data import prepare, titles  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file()
# The prepare stage's fields (pipeline: --config.data.*), defaults from the config.
cli.define_flags_from({
    "data.dataset": "Which raw format to read (ml-100k is embedded; the others need "
                    "--interactions and --items).",
    "interactions=data.interactions_file": "Interaction log. ml-100k: recbole ml-100k.inter "
    "('': the embedded copy); ml-1m/ml-10m: ratings.dat; amazon: reviews JSON lines (.json or "
    ".json.gz).",
    "items=data.items_file": "Item file. ml-100k: recbole ml-100k.item ('': the embedded copy); "
    "ml-1m/ml-10m: movies.dat; amazon: metadata JSON lines (2014 Python-literal or 2018 JSON).",
    "data.sample": "Few-shot training set size: if >= 0, also write "
                   "train_n{sample}_seed{seed}.json (training set shuffled with --seed, first N "
                   "kept, as the reference). -1: none.",
    "seed": "Run seed of the few-shot sample (paper: 0, 1, 2).",
    "data.history_len": "Previous items shown in a prompt.",
    "data.min_history": "A target needs at least this many previous items (0: the dataset's "
                        "reference rule, 10).",
    "data.target_rating_above": "Only targets rated above this become examples (the history "
                                "keeps every rating). 'default' and 'none': every target (the "
                                "reference today); 3: only targets rated 4-5 (the reference's "
                                "first commit).",
    "data.drop_empty_history": "Drop examples whose history is empty (amazon users with one "
                               "review; the reference keeps them).",
    "data.valid_test_size": "Rows of valid_5000.json / test_5000.json (all rows when fewer).",
    "data.valid_test_seed": "Seed of the valid/test samples (reference: 42).",
    "data.train_fraction": "Earliest fraction of examples for training.",
    "data.valid_fraction": "Next fraction for validation; test gets the rest.",
    "data.title_articles": "MovieLens 'Usual Suspects, The (1995)': keep as given, or 'front' "
                           "-> 'The Usual Suspects (1995)'.",
    "data.append_year": "ml-100k only: append the release year, 'Toy Story (1995)' (recbole "
                        "titles carry none, which leaves 22 titles shared by several movies).",
    "data.domain": "Prompt wording, 'movie' or 'game' ('': movie for MovieLens, game for "
                   "amazon).",
    "data.encoding": "Encoding of ml-1m/ml-10m .dat files ('': ISO-8859-1, as the reference).",
}, choices={"data.dataset": prepare.DATASETS, "data.title_articles": titles.TITLE_ARTICLE_STYLES})
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory to write the prepared files into.")
_KEEP_LAST = flags.DEFINE_boolean(
    "keep_last_of_short_users", None, "Users with at most --min_history items still give one "
    "example (their last item). Default: true for amazon (reference game rule), false for MovieLens.")
_TFDS = flags.DEFINE_boolean("tfds", False, "Also build the array_record TFDS dataset in OUT_DIR/tfds.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.output_dir(_OUT_DIR, _OUT_DIR.value)
  config = cli.config_of(_CONFIG)  # config.check, before any heavy work
  d = config.data
  cli.input_file("--interactions", d.interactions_file, required=False)
  cli.input_file("--items", d.items_file, required=False)
  if _TFDS.value:
    import importlib.util

    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise UserError("--tfds needs the tensorflow_datasets package (pip install "
                      "tensorflow-datasets array_record); without --tfds the JSON files suffice")
  options = config_lib.prepare_options(config, keep_last_of_short_users=_KEEP_LAST.value,
                                        build_tfds=_TFDS.value)
  stats = prepare.prepare(d.dataset, _OUT_DIR.value, d.interactions_file or None,
                          d.items_file or None, options)
  print(prepare.summary(stats, _OUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
