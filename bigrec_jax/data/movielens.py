"""MovieLens readers: the recbole ML-100K atomic files (embedded default) and ML-1M/10M `.dat`.

The catalog is every movie of the item file, in file order (the reference numbers movies by
their line in movies.dat); interactions with a movie missing from it are an error.
"""
from __future__ import annotations

from absl import logging

from bigrec_jax.data import raw, titles as titles_lib
from bigrec_jax.files import UserError


def _recbole_header(path: str, lineno: int, text: str, needed: tuple[str, ...]) -> dict[str, int]:
  """Column positions from a recbole typed header (`user_id:token<TAB>item_id:token ...`)."""
  names = [c.split(":", 1)[0] for c in text.split("\t")]
  missing = [n for n in needed if n not in names]
  if missing or any(":" not in c for c in text.split("\t")):
    raise UserError(f"{path}:{lineno}: not a recbole header (need typed columns "
                    f"{', '.join(needed)}; missing {missing or 'types'}): {text[:120]!r}")
  return {n: names.index(n) for n in names}


def _fields(path: str, lineno: int, text: str, sep: str, count: int, layout: str) -> list[str]:
  parts = text.split(sep)
  if len(parts) != count:
    raise UserError(f"{path}:{lineno}: expected {count} fields '{layout}' separated by "
                    f"{sep!r}, got {len(parts)}: {text[:120]!r}")
  return parts


def _check_title(path: str, lineno: int, title: str) -> str:
  if not title:
    raise UserError(f"{path}:{lineno}: empty movie title")
  return title


def read_ml100k(inter_path: str, item_path: str, *, append_year: bool = False) -> raw.RawLog:
  """Recbole's ml-100k.inter / ml-100k.item (titles carry no year; `append_year` adds it)."""
  item_raw_ids: list[str] = []
  names: list[str] = []
  linenos: list[int] = []
  cols: dict[str, int] = {}
  for lineno, text in raw.numbered_lines(item_path, "utf-8", "item (.item)"):
    if not cols:
      cols = _recbole_header(item_path, lineno, text, ("item_id", "movie_title"))
      continue
    parts = _fields(item_path, lineno, text, "\t", len(cols), "\\t".join(cols))
    title = _check_title(item_path, lineno, titles_lib.clean_title(parts[cols["movie_title"]]))
    year = parts[cols["release_year"]].strip() if "release_year" in cols else ""
    if append_year and year:
      title = f"{title} ({year})"
    item_raw_ids.append(parts[cols["item_id"]].strip())
    names.append(title)
    linenos.append(lineno)
  index = _catalog_index(item_path, item_raw_ids, linenos)

  users, items, ratings, stamps = [], [], [], []
  cols = {}
  for lineno, text in raw.numbered_lines(inter_path, "utf-8", "interaction (.inter)"):
    if not cols:
      cols = _recbole_header(inter_path, lineno, text, ("user_id", "item_id", "rating", "timestamp"))
      continue
    parts = _fields(inter_path, lineno, text, "\t", len(cols), "\\t".join(cols))
    item = parts[cols["item_id"]].strip()
    if item not in index:
      raise UserError(f"{inter_path}:{lineno}: item_id {item!r} is not in {item_path}")
    users.append(_user(inter_path, lineno, parts[cols["user_id"]]))
    items.append(index[item])
    ratings.append(raw.parse_float(inter_path, lineno, "rating", parts[cols["rating"]]))
    stamps.append(raw.parse_int(inter_path, lineno, "timestamp", parts[cols["timestamp"]]))
  return raw.make_log("ml-100k", item_raw_ids, names, users, items, ratings, stamps,
                      {"interactions": inter_path, "items": item_path})


def read_ml_dat(ratings_path: str, movies_path: str, *, name: str = "ml-1m",
                encoding: str = "ISO-8859-1") -> raw.RawLog:
  """ML-1M / ML-10M: `ratings.dat` (user::movie::rating::ts), `movies.dat` (id::title::genres)."""
  item_raw_ids: list[str] = []
  names: list[str] = []
  linenos: list[int] = []
  for lineno, text in raw.numbered_lines(movies_path, encoding, "movies.dat"):
    parts = text.split("::")
    if len(parts) < 3:
      raise UserError(f"{movies_path}:{lineno}: expected 'id::title::genres', got {text[:120]!r}")
    item_raw_ids.append(parts[0].strip())
    names.append(_check_title(movies_path, lineno,
                              titles_lib.clean_title("::".join(parts[1:-1]))))
    linenos.append(lineno)
  index = _catalog_index(movies_path, item_raw_ids, linenos)
  warning = raw.utf8_read_as_latin(movies_path, encoding, list(zip(linenos, names)))
  if warning:
    logging.warning("%s", warning)

  users, items, ratings, stamps = [], [], [], []
  for lineno, text in raw.numbered_lines(ratings_path, encoding, "ratings.dat"):
    user, movie, rating, stamp = _fields(ratings_path, lineno, text, "::", 4,
                                         "user::movie::rating::timestamp")
    movie = movie.strip()
    if movie not in index:
      raise UserError(f"{ratings_path}:{lineno}: movie id {movie!r} is not in {movies_path}")
    users.append(_user(ratings_path, lineno, user))
    items.append(index[movie])
    ratings.append(raw.parse_float(ratings_path, lineno, "rating", rating))
    stamps.append(raw.parse_int(ratings_path, lineno, "timestamp", stamp))
  return raw.make_log(name, item_raw_ids, names, users, items, ratings, stamps,
                      {"interactions": ratings_path, "items": movies_path})


def _user(path: str, lineno: int, text: str) -> str:
  user = text.strip()
  if not user:
    raise UserError(f"{path}:{lineno}: empty user id")
  return user


def _catalog_index(path: str, ids: list[str], linenos: list[int]) -> dict[str, int]:
  index: dict[str, int] = {}
  for i, (item, lineno) in enumerate(zip(ids, linenos)):
    if not item:
      raise UserError(f"{path}:{lineno}: empty item id")
    if item in index:
      raise UserError(f"{path}:{lineno}: item id {item!r} appears twice "
                      f"(first on line {linenos[index[item]]})")
    index[item] = i
  if not index:
    raise UserError(f"{path}: no items")
  return index
