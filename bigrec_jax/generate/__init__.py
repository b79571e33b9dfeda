"""Generation (BIGRec step 1 inference): jitted beam search, catalog-constrained decoding, runner.

    from bigrec_jax.generate import GenerateOptions, Generator, load_merged_model
    model = load_merged_model(None, adapter="runs/demo/train")   # LoRA merged into the weights
    rows = Generator(model, GenerateOptions(num_beams=4)).generate_rows(rows)

Lower level: `beam_search.search(config, SearchConfig(...), params, ids, mask, trie)`.
"""
from bigrec_jax.generate.beam_search import SearchConfig, SearchOutput, search
from bigrec_jax.generate.runner import (GenerateOptions, Generator, load_merged_model,
                                        resolve_adapter, run)

__all__ = ["SearchConfig", "SearchOutput", "search", "GenerateOptions", "Generator",
           "load_merged_model", "resolve_adapter", "run"]
