"""`prepare()`: raw files of one dataset -> the prepared-data directory every later stage reads.

Everything is read, checked and built in memory first; only then is each file written through
`files.atomic_write`, so a bad input line leaves nothing behind and an interrupted run never
leaves a half-written file. stats.json is removed first and written last, so a directory
without it is an interrupted run (load_prepared refuses it).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import numpy as np

from bigrec_jax import assets, files
from bigrec_jax.data import amazon, movielens, prepared, prompts, sequences, titles as titles_lib
from bigrec_jax.data.raw import RawLog
from bigrec_jax.files import UserError

SPLITS = ("train", "valid", "test")
EVAL_SAMPLE_FILES = {"valid": "valid_5000.json", "test": "test_5000.json"}
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to read one dataset and its reference defaults."""
  read: Callable[..., RawLog]
  domain: str
  min_history: int
  keep_last_of_short_users: bool
  target_rating_above: float | None
  interactions_help: str
  items_help: str


def _read_ml100k(inter, item, options):
  if inter is None and item is None:
    root = assets.ml100k_dir()
    inter, item = os.path.join(root, "ml-100k.inter"), os.path.join(root, "ml-100k.item")
  _both_given("ml-100k", inter, item)
  return movielens.read_ml100k(inter, item, append_year=options.append_year)


def _read_dat(name):
  def read(ratings, movies, options):
    _both_given(name, ratings, movies)
    return movielens.read_ml_dat(ratings, movies, name=name, encoding=options.encoding or "ISO-8859-1")
  return read


def _read_amazon(reviews, meta, options):
  _both_given("amazon", reviews, meta)
  return amazon.read_amazon(reviews, meta)


def _both_given(name, interactions, items):
  if not interactions or not items:
    raise UserError(f"dataset {name} needs both an interactions file and an items file "
                    f"(--interactions and --items; pipeline: --config.data.interactions_file and "
                    f"--config.data.items_file), got interactions={interactions!r}, "
                    f"items={items!r}")


# The reference's rules as its notebooks have them today (bigrec_jax/REFERENCE.md, "Data").
_MOVIE = dict(domain="movie", min_history=10, keep_last_of_short_users=False,
              target_rating_above=None)
DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(_read_ml100k, interactions_help="recbole ml-100k.inter",
                           items_help="recbole ml-100k.item", **_MOVIE),
    "ml-1m": DatasetSpec(_read_dat("ml-1m"), interactions_help="ratings.dat",
                         items_help="movies.dat", **_MOVIE),
    "ml-10m": DatasetSpec(_read_dat("ml-10m"), interactions_help="ratings.dat",
                          items_help="movies.dat", **_MOVIE),
    "amazon": DatasetSpec(_read_amazon, domain="game", min_history=10,
                          keep_last_of_short_users=True, target_rating_above=None,
                          interactions_help="reviews JSON lines (e.g. Video_Games_5.json[.gz])",
                          items_help="metadata JSON lines (e.g. meta_Video_Games.json[.gz])"),
}


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Options of `prepare`; None / "default" means the dataset's reference rule."""
  history_len: int = 10
  min_history: int | None = None
  keep_last_of_short_users: bool | None = None
  target_rating_above: float | str | None = "default"  # number, "default" or None/"none"
  drop_empty_history: bool = False  # drop examples without history (reference: keeps them)
  train_fraction: float = 0.8
  valid_fraction: float = 0.1
  eval_sample_size: int = 5000
  valid_sample_size: int | None = None  # None: eval_sample_size (a smaller valid set tunes gamma)
  eval_sample_seed: int = 42
  few_shot_sample: int = -1
  few_shot_seed: int = 0
  title_articles: str = "keep"
  append_year: bool = False
  domain: str | None = None
  encoding: str | None = None
  build_tfds: bool = False
  prompt_template: str = "alpaca"  # recorded in stats.json; prompts are rendered when tokenized


def rating_rule(value: float | str | None, default: float | None) -> float | None:
  if isinstance(value, str):
    text = value.strip().lower()
    if text == "default":
      return default
    if text in ("none", ""):
      return None
    try:
      return float(text)
    except ValueError:
      raise UserError(f"--target_rating_above (--config.data.target_rating_above) must be a "
                      f"number, 'default' or 'none', got {value!r}") from None
  return None if value is None else float(value)


def resolve_rules(spec: DatasetSpec, options: PrepareOptions) -> sequences.SequenceRules:
  return sequences.SequenceRules(
      history_len=options.history_len,
      min_history=spec.min_history if options.min_history is None else options.min_history,
      keep_last_of_short_users=(spec.keep_last_of_short_users
                                if options.keep_last_of_short_users is None
                                else options.keep_last_of_short_users),
      target_rating_above=rating_rule(options.target_rating_above, spec.target_rating_above),
      drop_empty_history=options.drop_empty_history,
      train_fraction=options.train_fraction, valid_fraction=options.valid_fraction).check()


def _check_options(dataset: str, out_dir: str, options: PrepareOptions) -> DatasetSpec:
  """What the readers do not check themselves (config.check runs first at every entry point)."""
  if dataset not in DATASETS:
    raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
  if not out_dir:
    raise UserError("no output directory given (--out_dir)")
  files.check_filesystem(out_dir, "the output directory")
  if files.exists(out_dir) and not files.isdir(out_dir):
    raise UserError(f"{out_dir}: exists and is not a directory")
  if options.eval_sample_size < 1:
    raise UserError(f"valid/test sample size (--valid_test_size, --config.data.valid_test_size) "
                    f"must be >= 1, got {options.eval_sample_size}")
  if options.append_year and dataset != "ml-100k":
    raise UserError("append_year only applies to ml-100k (the other MovieLens titles carry the year)")
  return DATASETS[dataset]


def few_shot_file(n: int, seed: int) -> str:
  return f"train_n{n}_seed{seed}.json"


@dataclasses.dataclass
class Built:
  """Everything `prepare` writes, built in memory first."""
  log: RawLog
  rows: dict[str, list[dict]]  # file stem -> rows (train, valid, test, samples, few-shot)
  popularity: list[int]
  stats: dict[str, Any]


def build(dataset: str, interactions_path: str | None = None, items_path: str | None = None,
          options: PrepareOptions | None = None, out_dir: str = "-") -> Built:
  """Reads and checks the raw files and builds every row; writes nothing."""
  options = options or PrepareOptions()
  spec = _check_options(dataset, out_dir, options)
  rules = resolve_rules(spec, options)
  domain = options.domain or spec.domain
  log = spec.read(interactions_path, items_path, options)
  log.titles = [titles_lib.style_title(t, options.title_articles) for t in log.titles]
  for item_id, title in enumerate(log.titles):
    problem = titles_lib.title_problem(title)
    if problem:
      raise UserError(f"{log.sources['items']}: item {log.item_raw_ids[item_id]!r}: {problem}")

  examples = sequences.build_examples(log, rules)
  if not examples:
    raise UserError(f"{log.sources['interactions']}: no user has enough interactions for an "
                    f"example (min_history={rules.min_history}, history_len={rules.history_len})")
  parts = dict(zip(SPLITS, sequences.split_examples(examples, rules.train_fraction,
                                                   rules.valid_fraction)))
  rows = {name: [sequences.make_row(e, log.titles, domain) for e in part]
          for name, part in parts.items()}
  for name, file in EVAL_SAMPLE_FILES.items():
    size = options.eval_sample_size
    if name == "valid" and options.valid_sample_size:
      size = options.valid_sample_size
    rows[file.removesuffix(".json")] = sequences.sample_rows(rows[name], size,
                                                             options.eval_sample_seed)
  if options.few_shot_sample != -1:
    rows[few_shot_file(options.few_shot_sample, options.few_shot_seed).removesuffix(".json")] = (
        sequences.few_shot(rows["train"], options.few_shot_sample, options.few_shot_seed))
  popularity = sequences.training_popularity(log, parts["train"])
  stats = _stats(dataset, domain, log, rules, options, parts, rows, popularity)
  return Built(log, rows, popularity, stats)


def write(out_dir: str, built: Built, build_tfds: bool = False) -> dict[str, Any]:
  """Writes every file atomically (stats.json last); returns the stats written."""
  files.makedirs(out_dir)
  stats_path = os.path.join(out_dir, "stats.json")
  files.remove(stats_path)  # until the new one is written, the directory reads as incomplete
  log = built.log
  files.atomic_write(os.path.join(out_dir, "items.tsv"),
                     "".join(f"{i}\t{t}\n" for i, t in enumerate(log.titles)))
  files.write_json(os.path.join(out_dir, "item_map.json"),
                   {raw_id: i for i, raw_id in enumerate(log.item_raw_ids)})
  for stem, rows in built.rows.items():
    prepared.write_rows(os.path.join(out_dir, f"{stem}.json"), rows)
  files.write_json(os.path.join(out_dir, "popularity.json"), built.popularity, indent=None)
  stats = dict(built.stats)
  if build_tfds:
    from bigrec_jax.data import tfds_builder  # imports tensorflow_datasets only when asked

    stats["tfds_dir"] = tfds_builder.build(out_dir, rows_by_split={
        k: v for k, v in built.rows.items() if k in tfds_builder.SPLITS})
  files.write_json(stats_path, stats)
  return stats


def prepare(dataset: str, out_dir: str, interactions_path: str | None = None,
            items_path: str | None = None, options: PrepareOptions | None = None) -> dict[str, Any]:
  """Reads the raw dataset, writes the prepared-data directory, returns stats.json's dict.

  Paths default to the embedded ML-100K for `dataset="ml-100k"`; other datasets need both.
  """
  options = options or PrepareOptions()
  started = time.time()
  built = build(dataset, interactions_path, items_path, options, out_dir)
  built.stats["build_seconds"] = round(time.time() - started, 3)
  return write(out_dir, built, options.build_tfds)


def _time_range(part) -> list[int] | None:
  return [part[0].timestamp, part[-1].timestamp] if part else None


def _stats(dataset, domain, log, rules, options, parts, rows, popularity):
  dup = titles_lib.duplicate_titles(log.titles)
  users_with_examples = len({e.user_id for part in parts.values() for e in part})
  return {
      "format_version": FORMAT_VERSION,
      "dataset": dataset,
      "domain": domain,
      "sources": log.sources,
      "users": log.num_users,
      "items": log.num_items,
      "interactions": log.num_interactions,
      "users_with_examples": users_with_examples,
      "items_without_interactions": int(np.sum(np.bincount(log.item_index,
                                                           minlength=log.num_items) == 0)),
      "items_in_training_popularity": int(sum(1 for c in popularity if c > 0)),
      "duplicate_titles": len(dup),
      "items_sharing_a_title": sum(len(v) for v in dup.values()),
      "dropped": log.dropped,
      "examples": {k: len(v) for k, v in rows.items()},
      "target_time_range": {k: _time_range(v) for k, v in parts.items()},
      "rules": dataclasses.asdict(rules),
      # What data.prompt_template named when this was prepared; stages render prompts from the
      # rows' ids at tokenization time and record the format they used (train_summary.json,
      # the generation summaries), so another template works on this directory as it is.
      "prompt_format": prompts.PromptFormat(options.prompt_template, domain).record(),
      "options": dataclasses.asdict(options),
  }


def summary(stats: dict[str, Any], out_dir: str) -> str:
  """A few human lines about a prepared directory (printed by launch/prepare_data.py)."""
  ex = stats["examples"]
  return (f"{stats['dataset']} -> {out_dir}: {stats['users']} users, {stats['items']} items, "
          f"{stats['interactions']} interactions; examples "
          + ", ".join(f"{k} {v}" for k, v in ex.items())
          + f"; {stats['duplicate_titles']} titles shared by several items; "
          f"built in {stats.get('build_seconds', 0):.1f} s\nrule: "
          + sequences.describe_rules(stats["rules"]))
