"""Evaluation of trained models: perplexity, HumanEval pass@k in a sandbox, code completion.

Modules: `config` (EvalConfig), `passk` (the Codex estimator), `sandbox` (isolated execution of
model-written programs), `generation` (sampling with stop strings), `humaneval` (the benchmark run),
`perplexity` (validation loss with the training packing), `cli` (the `codeparrot` commands).
Nothing here imports Prefect; `tasks/evaluate.py` adapts it.
"""
