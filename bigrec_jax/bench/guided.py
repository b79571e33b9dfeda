"""What catalog-aware decoding costs: the same constrained beam search with and without the levers.

    python -m bigrec_jax.bench.guided [--rows=32] [--batch=8] [--beams=4] [--new_tokens=32]

JAX only (the torch side has no catalog trie). Real BIGRec prompts from the embedded ML-100K test
split, its 1682-title catalog, the base SmolLM2 with bfloat16 matmul operands (the demo's
setting). Each variant is compiled and run once untimed, then timed over the same rows; the
variants may spell other titles, so they can stop after different numbers of steps (the mean
length of the returned hypotheses is printed beside the time). So the per-step cost is also
measured alone, with the same work on both sides: one step's scoring of N = batch * beams beams
(reference: log-softmax + trie mask; levers: + renormalisation, exclusion and guidance) at
sparse nodes and at the root (dense), beside one decode step of the model.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = {
    "constrained (reference scoring)": {},
    "+ renormalize": dict(renormalize=True),
    "+ renormalize, exclude shown": dict(renormalize=True, exclude_history="shown"),
    "+ renormalize, exclude shown, mostpop alpha 0.5": dict(
        renormalize=True, exclude_history="shown", assistant="mostpop", guidance=0.5),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=32)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--beams", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--steps_only", action="store_true", help="only the per-step table")
  args = parser.parse_args()

  from bigrec_jax.data import prepare
  from bigrec_jax.generate import guide as guide_lib
  from bigrec_jax.generate.runner import GenerateOptions, Generator, RowGuidance
  from bigrec_jax.model import load_model

  built = prepare.build("ml-100k")
  test = built.rows["test"]
  rows = [test[i * (len(test) // args.rows)] for i in range(args.rows)]
  titles = built.log.titles
  model = load_model(matmul_dtype="bfloat16")
  print(f"{len(rows)} rows, batch {args.batch}, {args.beams} beams, <= {args.new_tokens} new "
        f"tokens, {len(titles)} catalog titles")
  print("| variant | seconds | ratio | decode steps | ms per step | step ratio | mean tokens per "
        "hypothesis |\n|---|---|---|---|---|---|---|")
  base = None
  for name, levers in ({} if args.steps_only else VARIANTS).items():
    opts = GenerateOptions(num_beams=args.beams, num_return_sequences=args.beams,
                           max_new_tokens=args.new_tokens, batch_size=args.batch,
                           constrained=True, stop_at_closing_quote=True, progress=False,
                           **levers)
    gen = Generator(model, opts, titles=titles)
    guidance = None
    if gen.ranges is not None:  # per-row inputs built here: no prepared directory needed
      probs = (guide_lib.popularity_probabilities(built.popularity, len(rows))
               if opts.assistant == "mostpop" else None)
      guidance = RowGuidance([list(r["history_item_ids"]) for r in rows], probs)
    ids = gen.prompt_ids(rows)
    gen.generate_ids(ids, guidance=guidance)  # compile (every bucket) and warm up
    start = time.perf_counter()
    out = gen.generate_ids(ids, guidance=guidance)
    seconds = time.perf_counter() - start
    # The loop of a batch runs until its longest returned hypothesis is complete: the batch's
    # steps are that length, so time per step compares variants that spell other titles.
    steps = sum(max(int(max(out[i][2])) for i in indices if i >= 0)
                for _, indices in gen.plan([len(x) for x in ids]))
    per_step = 1000 * seconds / steps
    base = base or (seconds, per_step)
    length = np.mean([n for _, _, lengths in out for n in lengths if n > 0])
    print(f"| {name} | {seconds:.2f} | {seconds / base[0]:.2f}x | {steps} | {per_step:.1f} | "
          f"{per_step / base[1]:.2f}x | {length:.1f} |", flush=True)
  gen = Generator(model, GenerateOptions(
      num_beams=args.beams, num_return_sequences=args.beams, max_new_tokens=args.new_tokens,
      batch_size=args.batch, constrained=True, progress=False,
      **VARIANTS["+ renormalize, exclude shown, mostpop alpha 0.5"]), titles=titles)
  step_costs(model, gen, rows, args.beams)


def _median_ms(fn, *args, repeats: int = 20) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def step_costs(model, gen, rows, num_beams: int) -> None:
  """Milliseconds of one step's scoring (reference vs all levers) and of one decode step."""
  import jax
  import jax.numpy as jnp

  from bigrec_jax.generate import beam_search, decoder, guide as guide_lib, trie as trie_lib

  b = gen.batch_size
  n = b * num_beams
  vocab = model.config.vocab_size
  logits = jax.random.normal(jax.random.key(0), (n, vocab), jnp.float32) * 3
  host = guide_lib.row_prefixes(
      gen.catalog_order, gen.num_items, [r["history_item_ids"] for r in rows[:b]],
      guide_lib.popularity_probabilities(np.ones(gen.num_items), b))
  g = guide_lib.CatalogGuide(gen.ranges, **{k: jnp.asarray(v) for k, v in host.items()},
                             guidance=jnp.float32(0.5))
  reference = jax.jit(lambda lg, st: beam_search._mask_logprobs(
      jax.nn.log_softmax(lg, axis=-1), gen.trie, st))
  levers = jax.jit(lambda lg, st: guide_lib.catalog_logprobs(
      jax.nn.log_softmax(lg, axis=-1), gen.trie, st, g, True, num_beams))
  # Sparse nodes: three tokens into real titles (the quote and two title tokens).
  def node(seq):
    state = jnp.zeros((1,), jnp.int32)
    for tok in seq[:3]:
      state = trie_lib.advance(gen.trie, state, jnp.asarray([tok]))
    return int(state[0])

  seqs = trie_lib.title_sequences(model.tokenizer, [r["output"][1:-1] for r in rows])
  nodes = [s for s in map(node, seqs) if int(gen.trie.dense_row[s]) < 0]
  sparse = jnp.asarray([nodes[i % len(nodes)] for i in range(n)], jnp.int32)
  dense = jnp.zeros((n,), jnp.int32)
  ids = gen.prompt_ids(rows[:b])
  width = max(len(x) for x in ids)
  pad = np.zeros((b, width), np.int32)
  mask = np.zeros((b, width), np.int32)
  for i, x in enumerate(ids):
    pad[i, width - len(x):], mask[i, width - len(x):] = x, 1
  _, prompt = jax.jit(lambda i, m: decoder.prefill(model.config, gen.params, i, m))(pad, mask)
  t_max = 32
  cache = decoder.init_gen_cache(model.config, n, t_max)
  ancestors = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, t_max))
  step = jax.jit(lambda c, t: decoder.decode_step(model.config, gen.params, prompt, c, ancestors,
                                                  t, jnp.int32(3))[0])
  print("\n| per step (ms, N = %d beams) | reference scoring | all levers | decode step |" % n)
  print("|---|---|---|---|")
  decode = _median_ms(step, cache, jnp.zeros((n,), jnp.int32))
  for name, states in (("beams at sparse nodes", sparse), ("beams at the root (dense)", dense)):
    print(f"| {name} | {_median_ms(reference, logits, states):.2f} | "
          f"{_median_ms(levers, logits, states):.2f} | {decode:.1f} |", flush=True)


if __name__ == "__main__":
  main()
