"""On the real ML-100K split, SASRec beats MostPop (all-rank NDCG@10 on test_5000)."""
from __future__ import annotations

from bigrec_jax.baselines import run
from conftest import load_config, train_with_llvm_optimisation


def test_sasrec_beats_mostpop(ml100k_dir, tmp_path):
  config = load_config()
  # One epoch with a larger step size: enough to beat popularity, short enough for CI.
  config.train.update(max_epochs=1, batch_size=256, learning_rate=3e-3)
  pop = run.train_and_evaluate(config, model="mostpop", data_dir=ml100k_dir,
                               workdir=str(tmp_path / "mostpop"))["methods"]["mostpop"]["test"]
  sas = train_with_llvm_optimisation("sasrec", ml100k_dir, str(tmp_path / "sasrec"),
                                     max_epochs=1, batch_size=256, learning_rate=3e-3)
  print(f"ML-100K test_5000  MostPop NDCG@10 {pop['NDCG@10']:.4f} HR@10 {pop['HR@10']:.4f} | "
        f"SASRec (1 epoch) NDCG@10 {sas['NDCG@10']:.4f} HR@10 {sas['HR@10']:.4f}")
  assert sas["NDCG@10"] > pop["NDCG@10"]
