"""The Flax LLaMA family model: config, layers, LoRA, loading.

    from bigrec_jax.model import load_model
    m = load_model()            # embedded SmolLM2-135M-Instruct (GGUF), or an HF dir / .gguf path
    logits, _ = forward(m.config, m.params, ids, mask)
"""
from bigrec_jax.model.config import LORA_TARGETS, LlamaConfig, LoraConfig
from bigrec_jax.model.llama import (Llama, abstract_variables, forward, forward_shared_prefix,
                                    init_cache, init_params, last_hidden_state, output_logits,
                                    output_weight, prefix_then_suffix)
from bigrec_jax.model.loading import LoadedModel, load_model, load_tokenizer
from bigrec_jax.model import lora

__all__ = ["LORA_TARGETS", "LlamaConfig", "LoraConfig", "Llama", "abstract_variables", "forward",
           "forward_shared_prefix", "init_cache", "init_params", "last_hidden_state",
           "output_logits", "output_weight", "prefix_then_suffix", "LoadedModel", "load_model",
           "load_tokenizer", "lora"]
