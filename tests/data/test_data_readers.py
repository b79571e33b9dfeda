"""Each reader on small hand-written files, including broken lines (error names file and line)."""
from __future__ import annotations

import gzip
import json

import pytest

from bigrec_jax.data import amazon, movielens, prepare, titles
from bigrec_jax.files import UserError

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"


def _write(path, lines, encoding="utf-8"):
  path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
  return str(path)


def _recbole(tmp_path, inter_lines, item_lines):
  return (_write(tmp_path / "x.inter", [INTER_HEADER] + inter_lines),
          _write(tmp_path / "x.item", [ITEM_HEADER] + item_lines))


GOOD_ITEMS = ["10\tToy Story\t1995\tAnimation", "20\t\"Crow, The\" \t1994\tAction",
              "30\tToy Story\t2005\tAnimation"]


def test_recbole_ml100k_reader(tmp_path):
  inter, item = _recbole(tmp_path, ["7\t20\t4\t881250949", "5\t10\t3.0\t881250950.0"], GOOD_ITEMS)
  log = movielens.read_ml100k(inter, item)
  assert log.item_raw_ids == ["10", "20", "30"]
  assert log.titles == ["Toy Story", "Crow, The", "Toy Story"]  # cleaned, duplicates kept
  assert log.user_ids == ["7", "5"]
  assert log.item_index.tolist() == [1, 0]
  assert log.ratings.tolist() == [4.0, 3.0]
  assert log.timestamps.tolist() == [881250949, 881250950]
  assert movielens.read_ml100k(inter, item, append_year=True).titles[2] == "Toy Story (2005)"


@pytest.mark.parametrize("inter_lines, item_lines, where, what", [
    (["7\t20\t4"], GOOD_ITEMS, "x.inter:2", "expected 4 fields"),
    (["7\t20\t4\t881250949", "7\t10\t4\tyesterday"], GOOD_ITEMS, "x.inter:3", "timestamp"),
    (["7\t99\t4\t881250949"], GOOD_ITEMS, "x.inter:2", "item_id '99' is not in"),
    (["7\t20\tfive\t881250949"], GOOD_ITEMS, "x.inter:2", "rating 'five' is not a number"),
    (["7\t20\t4\t881250949"], GOOD_ITEMS + ["10\tAgain\t1990\tDrama"], "x.item:5", "appears twice"),
    (["7\t20\t4\t881250949"], ["40\t  \t1990\tDrama"], "x.item:2", "empty movie title"),
])
def test_recbole_broken_lines(tmp_path, inter_lines, item_lines, where, what):
  inter, item = _recbole(tmp_path, inter_lines, item_lines)
  with pytest.raises(UserError, match=what) as e:
    movielens.read_ml100k(inter, item)
  assert where in str(e.value)


def test_recbole_header_and_encoding_errors(tmp_path):
  inter = _write(tmp_path / "h.inter", ["user_id\titem_id\trating\ttimestamp", "1\t10\t4\t5"])
  item = _write(tmp_path / "h.item", [ITEM_HEADER] + GOOD_ITEMS)
  with pytest.raises(UserError, match=r"h\.inter:1: not a recbole header"):
    movielens.read_ml100k(inter, item)
  (tmp_path / "bad.item").write_bytes((ITEM_HEADER + "\n10\tCaf\xe9\t1990\tDrama\n").encode("latin-1"))
  with pytest.raises(UserError, match=r"bad\.item:2: not valid utf-8"):
    movielens.read_ml100k(inter, str(tmp_path / "bad.item"))
  with pytest.raises(UserError, match="file not found"):
    movielens.read_ml100k(str(tmp_path / "missing.inter"), item)


def test_movielens_dat_reader_iso_8859_1(tmp_path):
  movies = _write(tmp_path / "movies.dat", ["1::Café Society (1995)::Drama",
                                            "2::Usual Suspects, The (1995)::Crime|Thriller"],
                  encoding="ISO-8859-1")
  ratings = _write(tmp_path / "ratings.dat", ["1::2::5::978300760", "1::1::3::978302109"])
  log = movielens.read_ml_dat(ratings, movies)
  assert log.titles == ["Café Society (1995)", "Usual Suspects, The (1995)"]
  assert log.item_index.tolist() == [1, 0]
  assert titles.move_article_to_front(log.titles[1]) == "The Usual Suspects (1995)"


@pytest.mark.parametrize("ratings_lines, movies_lines, where, what", [
    (["1::2::5::978300760", "1::2::5"], ["2::Heat (1995)::Action"], "ratings.dat:2", "expected 4 fields"),
    (["1::3::5::978300760"], ["2::Heat (1995)::Action"], "ratings.dat:1", "movie id '3' is not in"),
    (["1::2::5::97830x"], ["2::Heat (1995)::Action"], "ratings.dat:1", "timestamp"),
    (["1::2::5::978300760"], ["2::Heat (1995)::Action", "3 Casino (1995)"], "movies.dat:2",
     "expected 'id::title::genres'"),
])
def test_movielens_dat_broken_lines(tmp_path, ratings_lines, movies_lines, where, what):
  ratings = _write(tmp_path / "ratings.dat", ratings_lines)
  movies = _write(tmp_path / "movies.dat", movies_lines)
  with pytest.raises(UserError, match=what) as e:
    movielens.read_ml_dat(ratings, movies)
  assert where in str(e.value)


REVIEWS = [
    {"reviewerID": "U1", "asin": "B2", "overall": 5.0, "unixReviewTime": 1400000000},
    {"reviewerID": "U1", "asin": "B9", "overall": 4.0, "unixReviewTime": 1400000001},  # untitled
    {"reviewerID": "U2", "asin": "B1", "overall": 3.0, "unixReviewTime": 1400000002},
    {"reviewerID": "U2", "asin": "B2", "overall": 3.0},  # no time: skipped
    {"reviewerID": "U2", "asin": "B3", "overall": 1.0, "unixReviewTime": 1400000005},  # 1-char title
]


def _amazon_files(tmp_path, gz=False, meta_2014=False):
  meta = [{"asin": "B1", "title": "Halo 3"}, {"asin": "B2", "title": ' "Zelda" '},
          {"asin": "B3", "title": "X"}, {"asin": "B9"}]
  if meta_2014:  # the 2014 metadata files are Python literals, not JSON
    meta_lines = [repr(m) for m in meta]
  else:
    meta_lines = [json.dumps(m) for m in meta]
  review_lines = [json.dumps(r) for r in REVIEWS]
  if gz:
    with gzip.open(tmp_path / "reviews.json.gz", "wt") as f:
      f.write("\n".join(review_lines) + "\n")
    reviews = str(tmp_path / "reviews.json.gz")
  else:
    reviews = _write(tmp_path / "reviews.json", review_lines)
  return reviews, _write(tmp_path / "meta.json", meta_lines)


@pytest.mark.parametrize("gz, meta_2014", [(False, False), (True, True)])
def test_amazon_reader(tmp_path, gz, meta_2014):
  log = amazon.read_amazon(*_amazon_files(tmp_path, gz, meta_2014))
  assert log.item_raw_ids == ["B2", "B1"]  # first appearance among kept reviews
  assert log.titles == ["Zelda", "Halo 3"]
  assert log.user_ids == ["U1", "U2"]
  assert log.item_index.tolist() == [0, 1]
  assert log.timestamps.tolist() == [1400000000, 1400000002]
  assert log.dropped == {"items_without_title": 2, "reviews_of_items_without_title": 2,
                         "reviews_without_rating_or_time": 1}


def test_amazon_broken_lines(tmp_path):
  reviews, meta = _amazon_files(tmp_path)
  broken = _write(tmp_path / "broken.json", [json.dumps(REVIEWS[0]), '{"reviewerID": "U3", "asin"'])
  with pytest.raises(UserError, match=r"broken\.json:2: not a JSON object"):
    amazon.read_amazon(broken, meta)
  no_asin = _write(tmp_path / "noasin.json", [json.dumps({"reviewerID": "U3", "overall": 1})])
  with pytest.raises(UserError, match=r"noasin\.json:1: missing or empty 'asin'"):
    amazon.read_amazon(no_asin, meta)
  bad_meta = _write(tmp_path / "badmeta.json", ['{"asin": "B1", "title": "Halo"}', "[1, 2]"])
  with pytest.raises(UserError, match=r"badmeta\.json:2: expected a JSON object"):
    amazon.read_amazon(reviews, bad_meta)


def test_broken_input_writes_nothing(tmp_path, toy_dat):
  ratings, movies = toy_dat
  with open(ratings, "a") as f:
    f.write("9::1::4\n")
  out = tmp_path / "out"
  with pytest.raises(UserError, match=r"ratings\.dat:13: expected 4 fields"):
    prepare.prepare("ml-1m", str(out), ratings, movies)
  assert not out.exists()


def test_title_cleaning():
  assert titles.clean_title(' "Halo\t3" \n') == "Halo 3"
  assert titles.clean_title("Toy Story") == "Toy Story"
  assert titles.move_article_to_front("Usual Suspects, The (1995)") == "The Usual Suspects (1995)"
  assert titles.move_article_to_front("Crow, The") == "The Crow"
  assert titles.move_article_to_front("Homme et une femme, Un (1966)") == "Homme et une femme, Un (1966)"
  assert titles.title_problem("A\tB") and titles.title_problem('"A"') and titles.title_problem("")
  assert titles.title_problem('12" Figure') is None  # inner quotes are allowed
  assert titles.title_group_ids(["A", "B", "A", "C", "B"]).tolist() == [0, 1, 0, 3, 1]


def test_ids_by_title_groups_ids_in_order_under_a_key():
  names = ["A", "B", '"A"', "C", "B"]
  assert titles.ids_by_title(names) == {"A": [0], "B": [1, 4], '"A"': [2], "C": [3]}
  assert titles.ids_by_title(names, key=lambda t: t.strip('"')) == {
      "A": [0, 2], "B": [1, 4], "C": [3]}
  assert titles.duplicate_titles(names) == {"B": [1, 4]}
