"""Default BIGRec configuration: the reference hyperparameters (REFERENCE.md) on the embedded assets.

Every field can be overridden on the command line, e.g. `--config.train.learning_rate=3e-4`.
Other presets (configs/demo.py, movie_llama7b.py, ...) start from this one.
"""
from __future__ import annotations

import ml_collections

from bigrec_jax import parallel
from bigrec_jax.ground import gamma


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: None/"" = the embedded SmolLM2-135M-Instruct GGUF; else a .gguf or HF directory.
  c.model = ml_collections.ConfigDict()
  c.model.path = ""
  # Directory with the tokenizer files, for weights that come without them ("" = the model's).
  c.model.tokenizer = ""
  c.model.dtype = "float32"  # compute dtype; bfloat16 on GPU/TPU
  c.model.param_dtype = "float32"
  # Operands of the base-weight matmuls ("" = dtype), accumulated in float32; "bfloat16" with
  # float32 activations runs them on AMX / AVX512-BF16 CPUs (1.1-1.7x per training step there);
  # "auto": bfloat16 where the host multiplies it in hardware, else dtype (bigrec_jax/host.py).
  c.model.matmul_dtype = ""
  # Implementation of the products, attention and decode-weight packing (bigrec_jax/model/ops.py):
  # "cpu" (custom VJPs tuned on XLA:CPU), "xla" (plain jnp / jax.nn.dot_product_attention),
  # "auto" = "cpu" on a CPU backend, "xla" on GPU/TPU.
  c.model.kernels = "auto"
  c.model.remat = False

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.05
  c.lora.targets = ("q_proj", "v_proj")

  # Data: raw logs -> a prepared directory (launch/prepare_data.py or the pipeline's prepare).
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-100k"  # ml-100k (embedded) | ml-1m | ml-10m | amazon
  c.data.interactions_file = ""  # raw interactions file ("" = the embedded ML-100K)
  c.data.items_file = ""  # raw item/metadata file
  c.data.encoding = ""  # of ML-1M/10M .dat files ("" = ISO-8859-1, as the reference)
  c.data.history_len = 10
  # Departures from the reference's data rules (REFERENCE.md "Data"), off by default:
  # "default"/"none" keep every target; 3 keeps targets rated 4-5 (the reference's first commit).
  c.data.target_rating_above = "default"
  c.data.drop_empty_history = False  # the game rule's single-review users give an empty history
  c.data.min_history = 0  # earlier items a target needs (0 = the dataset's rule: 10)
  c.data.train_fraction = 0.8  # earliest examples train, the next valid_fraction validate
  c.data.valid_fraction = 0.1
  c.data.valid_test_seed = 42  # of the valid/test samples (the reference's)
  c.data.title_articles = "keep"  # keep | front: "Usual Suspects, The" -> "The Usual Suspects"
  c.data.append_year = False  # ml-100k: "Toy Story (1995)" (recbole titles carry no year)
  c.data.domain = ""  # prompt wording, movie | game ("" = the dataset's)
  c.data.valid_test_size = 5000  # rows sampled (seed 42) from the valid/test splits
  c.data.valid_size = 0  # if > 0, the valid sample's size instead (it only tunes gamma)
  c.data.dir = ""  # prepared directory for launch/train.py (the pipeline sets it)
  c.data.extra_train_dirs = ()  # other prepared domains whose training rows are added (multi-domain)
  c.data.sample = 1024  # few-shot: first N training rows after a seeded shuffle; -1 = all
  c.data.cutoff_len = 512
  c.data.train_on_inputs = True  # reference: loss over the whole prompt
  # alpaca (the reference's) | chatml (SmolLM2-Instruct's own chat format): data/prompts.py
  c.data.prompt_template = "alpaca"
  c.data.group_by_length = True
  c.data.bucket_multiple = 64
  c.data.valid_split = "valid_5000"  # validation loss each epoch on this split ("" = none)
  c.data.valid_sample = -1  # rows of it used (-1 = all)

  c.train = ml_collections.ConfigDict()
  # "lora": adapters on the frozen base (the paper); "full": every weight, float32 master copies
  # sharded over the mesh's fsdp axis; the output is an HF checkpoint in WORKDIR/model.
  c.train.mode = "lora"
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 20
  # Rate after warm-up: linear decay to 0 (HF Trainer's default, the reference) | cosine | constant.
  c.train.schedule = "linear"
  c.train.weight_decay = 0.0
  c.train.max_grad_norm = 0.0  # 0 = no clipping (HF Trainer clips at 1.0 when asked)
  c.train.micro_batch_size = 4  # per data-parallel replica
  c.train.batch_size = 128  # effective batch: micro-batches accumulated inside one step
  c.train.num_epochs = 50
  c.train.max_steps = -1  # -1 = planned from epochs
  c.train.early_stopping_patience = 5
  c.train.eval_every_epochs = 1
  c.train.keep_checkpoints = 2
  c.train.log_every_steps = 1
  c.train.eval_batch_size = 8  # per data-parallel replica (HF per_device_eval_batch_size)
  c.train.checkpoint_every_steps = 10  # also after every validation and on SIGTERM; 0 = only then
  c.train.resume = True  # continue from the newest good checkpoint in the workdir
  c.train.loss_chunk_tokens = 1024  # fused output-projection + CE over chunks; 0 = full logits
  # Run the tokens every example opens with (the instruction) once per micro-batch, not per row.
  c.train.share_prompt_prefix = True

  # Device mesh (data, fsdp, tensor); -1 = the rest of the devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)
  # Logical axis -> mesh axes ("data,fsdp"; "" = replicated), MaxText-style; the table is
  # bigrec_jax/parallel.py's LOGICAL_RULES. E.g. --config.mesh.rules.embed="" replicates weights.
  c.mesh.rules = ml_collections.ConfigDict(parallel.rules_as_strings())

  c.generate = ml_collections.ConfigDict()
  c.generate.num_beams = 4
  c.generate.num_return_sequences = 4
  c.generate.max_new_tokens = 128
  c.generate.batch_size = 8
  c.generate.length_penalty = 1.0
  c.generate.constrained = False  # restrict beams to catalog titles (beyond the paper)
  # End a hypothesis at the closing `"` of its title as if EOS followed (beyond the paper).
  c.generate.stop_at_closing_quote = False
  c.generate.share_prompt_prefix = True  # the shared instruction once per batch (exact)
  c.generate.early_stopping = False  # HF beam search's early_stopping (the reference: off)
  c.generate.bucket_multiple = 32  # prompts padded to a multiple of this (one compile per bucket)
  c.generate.max_prompt_len = 0  # longest prompt in tokens; 0 = the context minus max_new_tokens
  c.generate.truncate_long_prompts = False  # drop a long prompt's oldest tokens, with a warning
  # Catalog-aware decoding (generate/guide.py; "Decoding Matters" levers; constrained only).
  # Off by default: the reference search.
  c.generate.renormalize = False  # log-probs renormalised over the allowed trie children
  c.generate.exclude_history = "none"  # none | shown | all_past: the user's own items leave the trie
  # none | mostpop | llm_prior (the model's own titles for an empty history: no statistics) |
  # sasrec | gru4rec | caser | dros (these run the baselines first)
  c.generate.assistant = "none"
  # alpha: alpha * log p_LLM + (1 - alpha) * log q (1 = LLM alone); with llm_prior, alpha > 1
  # is contrastive decoding: log p + (alpha - 1) * log(p / q) favours what this history adds.
  c.generate.guidance = 1.0
  c.generate.assistant_temperature = 1.0  # CF assistants: softmax(scores / temperature)
  # llm_prior: 0 = its q is the model's titles after a history-free prompt; N = their mean over
  # the prompts of N training rows spread over train.json (the model's marginal over real users)
  c.generate.prior_rows = 0
  # With an assistant: alphas tried on the valid rows; the one whose grounded valid
  # `guidance_metric` is best (gammas tuned on the same rows, as for the test split) is used for
  # both splits; () = just `guidance`. E.g. (0.0, 0.25, 0.5, 0.75, 1.0).
  c.generate.guidance_grid = ()
  # Length penalties tried on the valid rows the same way (with the alphas: their product);
  # () = just `length_penalty`. E.g. (0.0, 1.0) (D3 uses 0; the reference 1).
  c.generate.length_penalty_grid = ()
  c.generate.guidance_metric = "bigrec/NDCG@10"  # method/metric of metrics.json (both grids)

  c.ground = ml_collections.ConfigDict()
  c.ground.embed_batch_size = 16
  c.ground.ks = (1, 3, 5, 10, 20, 50)
  # Returned sequences grounded per row: 1 = predict[0] (the paper); N > 1 = predict[0..N-1],
  # per-beam min-max distances weighted by 1/(rank+1), re-normalised over non-empty beams.
  c.ground.beams = 1
  c.ground.cf_sources = ("sasrec",)  # baselines whose scores are injected (CF grounding)
  # Gamma grids searched on valid (the reference's: popularity 0..99; CF 0, 0.01..0.99, 1..99).
  c.ground.pop_gammas = gamma.POP_GAMMAS
  c.ground.cf_gammas = gamma.CF_GAMMAS
  c.ground.both = True  # also popularity + CF together (coordinate search; an extension)
  c.ground.query_batch = 0  # prediction rows per grounding batch; 0 = from a memory budget
  c.ground.gamma_batch = 4  # gammas evaluated together in the search
  c.ground.embedding_cache = ""  # catalog embedding cache ("" = $BIGREC_HOME/embeddings)

  # Sequential baselines trained on the same examples (configs/baselines.py holds their knobs).
  from configs import baselines as baselines_config  # pylint: disable=g-import-not-at-top

  c.baselines = baselines_config.get_config()  # also which ones the pipeline runs (models)

  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.stages = ()  # () = all: prepare, train, generate, baselines, evaluate, report
  c.pipeline.force_stages = ()  # redo these even if complete ("all" = everything)
  # NAME=WORKDIR of finished runs on the same test rows shown beside this one in report.md
  # (e.g. "reference recipe=runs/demo_reference"): the quality ablation.
  c.pipeline.compare = ()
  # Several seeds: one run each under workdir/seed_<s>, mean and spread reported. Empty: the one
  # run of `seed` (so `--config.seed=1` alone is not overridden by a default list).
  c.seeds = ()
  # Locked: setting a field this file does not define (a misspelling, in a config file or on the
  # command line) is an error naming it and its close matches; values can still change.
  c.lock()
  return c
