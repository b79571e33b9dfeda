"""Catalog-aware decoding with the real SmolLM2 on real ML-100K rows and titles (runner level)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.data import prepare, prompts
from bigrec_jax.files import UserError
from bigrec_jax.generate import trie as trie_lib
from bigrec_jax.generate.runner import GenerateOptions, Generator
from bigrec_jax.model import forward


@pytest.fixture(scope="module")
def prepared_dir(ml100k, tmp_path_factory):
  out = tmp_path_factory.mktemp("ml100k")
  prepare.write(str(out), ml100k)
  return str(out)


def _options(**kw):
  base = dict(num_beams=4, num_return_sequences=4, max_new_tokens=32, batch_size=2,
              constrained=True, length_penalty=0.0, progress=False)
  return GenerateOptions(**{**base, **kw})


def test_renormalised_beams_are_the_catalog_restricted_log_probs(smollm2, ml100k, real_rows):
  """Six real titles, six beams: every title comes back scored by its log-probability under the
  model restricted to the catalog, computed here by scoring each title with a full forward."""
  tok = smollm2.tokenizer
  seqs = trie_lib.title_sequences(tok, ml100k.log.titles)
  catalog = [t for t, s in zip(ml100k.log.titles, seqs) if len(s) <= 7][:6]
  generator = Generator(smollm2, _options(num_beams=6, num_return_sequences=6, max_new_tokens=8,
                                          renormalize=True), titles=catalog)
  rows = real_rows[:2]
  ids = generator.prompt_ids(rows)
  results = generator.generate_ids(ids)
  title_seqs = {tuple(s): t for s, t in zip(trie_lib.title_sequences(tok, catalog), catalog)}
  children = lambda pre: sorted({s[len(pre)] for s in title_seqs if s[:len(pre)] == pre})
  # The weights an argument: closed over, they are constants folded into the program.
  run = jax.jit(lambda p, i: forward(smollm2.config, p, i, jnp.ones_like(i))[0])
  longest = max(len(s) for s in title_seqs)
  for prompt, (tokens, scores, lengths) in zip(ids, results):
    got = [tuple(int(x) for x in t[:n]) for t, n in zip(tokens, lengths)]
    assert sorted(got) == sorted(title_seqs)
    # All titles in one causal forward, right-padded (padding only follows what is read).
    full = np.stack([np.concatenate([prompt, np.pad(np.asarray(seq, np.int32),
                                                    (0, longest - len(seq)))]) for seq in got])
    logits = run(smollm2.params, full)[:, len(prompt) - 1:]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    want = [sum(logp[r, t, x] - np.log(np.exp(logp[r, t, children(seq[:t])]).sum())
                for t, x in enumerate(seq)) for r, seq in enumerate(got)]
    np.testing.assert_allclose(scores, want, atol=2e-3)  # float32 decode cache vs a forward
    assert got[0] == got[int(np.argmax(want))]


def test_exclusion_and_mostpop_guidance_on_the_full_catalog(smollm2, ml100k, prepared_dir,
                                                            real_rows):
  """alpha = 0 with popularity shares: each beam scores log(share of its title among the items
  the row did not watch); no watched title ever comes back; all-excluded rows are refused."""
  titles = ml100k.log.titles
  generator = Generator(smollm2, _options(renormalize=True, exclude_history="shown",
                                          assistant="mostpop", guidance=0.0), titles=titles)
  rows = real_rows[:2]
  guidance = generator.row_guidance(rows, "test rows", data_dir=prepared_dir)
  out = generator.generate_rows(rows, "test rows", guidance)
  counts = np.asarray(ml100k.popularity, np.float64)
  in_trie = np.zeros(len(titles), bool)
  in_trie[generator.catalog_order] = True
  for row, res in zip(rows, out):
    watched = {titles[i] for i in row["history_item_ids"]}
    kept = in_trie & ~np.isin(titles, list(watched))  # every id of a watched title leaves
    assert all(prompts.unquote(p) not in watched for p in res["predict"]), res["predict"]
    for text, score in zip(res["predict"], res["predict_scores"]):
      ids = [i for i, t in enumerate(titles) if t == prompts.unquote(text)]
      share = counts[ids][kept[ids]].sum() / counts[kept].sum()
      assert score == pytest.approx(np.log(share), abs=1e-4)

  # A row that watched every catalog item has nothing left: a clear error, not an empty beam.
  everything = dict(rows[0], history_item_ids=list(range(len(titles))))
  with pytest.raises(UserError, match="row 1: .*excludes every one"):
    generator.row_guidance([rows[0], everything], "test rows", data_dir=prepared_dir)


def test_levers_need_constrained_decoding_and_valid_values(smollm2):
  for kw, message in ((dict(constrained=False, renormalize=True), "constrained"),
                      (dict(exclude_history="all"), "exclude_history"),
                      (dict(assistant="bert4rec"), "assistant"),
                      (dict(assistant="mostpop", guidance=1.5), "guidance"),
                      (dict(assistant="llm_prior", guidance=11.0), "guidance"),
                      (dict(assistant="sasrec", assistant_temperature=0.0), "temperature")):
    with pytest.raises(UserError, match=message):
      Generator(smollm2, _options(**kw), titles=["Toy Story (1995)"])


def test_all_past_excludes_every_earlier_example_of_the_user(ml100k, prepared_dir):
  from bigrec_jax.generate.runner import history_exclusions

  row = ml100k.rows["test"][0]
  past = history_exclusions([row], "all_past", prepared_dir, "rows")[0]
  earlier = [r for split in ("train", "valid", "test") for r in ml100k.rows[split]
             if r["user_id"] == row["user_id"] and r["target_timestamp"] < row["target_timestamp"]]
  want = set(row["history_item_ids"]).union(
      *({r["target_item_id"], *r["history_item_ids"]} for r in earlier))
  assert set(past) == want and len(want) > len(row["history_item_ids"])
  with pytest.raises(UserError, match="history_item_ids"):
    history_exclusions([{"instruction": "x", "input": "y"}], "shown", None, "rows")
