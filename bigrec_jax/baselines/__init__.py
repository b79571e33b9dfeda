"""Sequential baselines (SASRec, GRU4Rec, Caser, DROS, MostPop): trained on the LLM's rows,
ranked all-rank with the project's metrics, and exported as per-row score matrices for CF
injection.

Entry point: `run.train_and_evaluate` (launch/train_baseline.py).
"""
