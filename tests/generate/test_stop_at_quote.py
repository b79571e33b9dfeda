"""`stop_at_closing_quote` on the real SmolLM2: greedy and beam search end at the closing `"`."""
from __future__ import annotations

import numpy as np

from bigrec_jax.data import prompts
from bigrec_jax.generate import GenerateOptions, Generator, beam_search

# Raw prompts whose continuation is a list of quoted titles: without the flag the model goes on
# past the first closing quote (`", "Next`); with it every hypothesis ends there.
LISTS = ['Some famous movies: "Star Wars", "Fargo",',
         'My favourite movies are "Toy Story", "Heat", ']


def test_token_quote_counts(smollm2):
  tok = smollm2.tokenizer
  counts = beam_search.token_quote_counts(tok, smollm2.config.vocab_size)
  assert counts.shape == (smollm2.config.vocab_size,) and counts.dtype == np.int32
  for text, want in (('"', 1), ('",', 1), ('""', 2), ("Story", 0)):
    ids = tok.convert_tokens_to_ids([text])
    assert counts[ids[0]] == want, text
  assert prompts.PromptFormat.after_answer(' "Heat", "') == ', "'
  assert prompts.PromptFormat.after_answer('"Heat') == ""


def test_greedy_and_beam_stop_at_the_closing_quote(smollm2):
  tok = smollm2.tokenizer
  counts = beam_search.token_quote_counts(tok, smollm2.config.vocab_size)
  new = 12
  for beams in (1, 4):
    free = Generator(smollm2, GenerateOptions(num_beams=beams, num_return_sequences=beams,
                                              max_new_tokens=new, batch_size=2,
                                              progress=False))
    stop = Generator(smollm2, GenerateOptions(num_beams=beams, num_return_sequences=beams,
                                              max_new_tokens=new, batch_size=2,
                                              stop_at_closing_quote=True, progress=False))
    ids = [np.asarray(x, np.int32) for x in tok(LISTS)["input_ids"]]
    free_out, stop_out = free.generate_ids(ids), stop.generate_ids(ids)
    free_text, _ = free.generate_prompts(LISTS)
    stop_text, _ = stop.generate_prompts(LISTS)
    cut_tail = 0
    for i, prompt in enumerate(LISTS):
      (f_tok, _, f_len), (s_tok, s_scores, s_len) = free_out[i], stop_out[i]
      for r in range(beams):
        seq = s_tok[r, :s_len[r]]
        quotes = np.cumsum(counts[seq])
        # Ends at the token that brings the count to 2 (EOS / max length otherwise), not later.
        assert (quotes[:-1] < 2).all()
        assert quotes[-1] >= 2 or seq[-1] == tok.eos_token_id or s_len[r] == new
        text = stop_text[i][r]
        generated = text[len(prompt):] if text.startswith(prompt) else text
        if quotes[-1] >= 2:
          assert text.endswith('"') and generated.count('"') == 2, text
          cut_tail += not tok.decode(seq[-1:]).endswith('"')  # e.g. `",`: the `,` was cut
      assert list(s_scores) == sorted(s_scores, reverse=True)
      if beams == 1:  # greedy: the free path cut at its closing quote
        n = int(s_len[0])
        np.testing.assert_array_equal(s_tok[0, :n], f_tok[0, :n])
        assert f_len[0] > n, "the continuation should go on past the closing quote"
        assert free_text[i][0].startswith(stop_text[i][0])
    # Without the flag the texts go on past a closing quote (",  "Next...).
    assert any(t.count('"') > prompt.count('"') + 2 for p, prompt in zip(free_text, LISTS)
               for t in p)
    if beams == 4:
      assert cut_tail > 0, "some hypothesis should end in a token like `\",` that is cut"


def test_constrained_with_stop_at_closing_quote_gives_catalog_titles(smollm2, ml100k,
                                                                      real_rows):
  tok = smollm2.tokenizer
  catalog = ml100k.log.titles[:50]
  generator = Generator(smollm2, GenerateOptions(num_beams=4, num_return_sequences=4,
                                                 max_new_tokens=24, batch_size=2,
                                                 constrained=True, stop_at_closing_quote=True,
                                                 progress=False), titles=catalog)
  ids = generator.prompt_ids(real_rows[:2])
  allowed = {prompts.quote(t) for t in catalog}
  for prompt, (tokens, scores, lengths) in zip(ids, generator.generate_ids(ids)):
    predict, predict_scores = generator.decode(prompt, tokens, scores, lengths)
    assert all(p in allowed for p in predict), predict
    assert all(s is not None for s in predict_scores)
    for t, n in zip(tokens, lengths):  # each ends at its closing quote: no EOS generated
      assert n > 0 and tok.eos_token_id not in t[:n].tolist()
      assert tok.decode(t[:n]).endswith('"')
