"""The builder (host, torch): PEFT adapters in, subspace, projection, coefficient training, PEFT adapters out.

Imports torch, transformers and peft inside its modules; knows nothing of ONNX (tests/test_architecture.py).

Front door: one module per job, each named in `__all__` (`import edge_lorax.builder` itself imports none of them,
so it stays torch-free):

  subspace   build_subspace: PEFT adapter folders -> a subspace folder (streaming SVD)
  project    project_adapter, project_many, project_sources, reconstruct_adapter: adapters <-> users
  train      train_coeffs: a new user's coefficients (+ head) trained on frozen components
  fleet      train_many: many users trained in one pass
  baselines  train_lora: the LoRA, VeRA and head-only baselines
  probe      fit_probe: logistic regression on frozen features
  merge      save_merged_model: the base model with a user's ΔW folded in
  data       load_task, task_summary: tasks by spec (a data file, vader:..., spam:sms, ...)
  models     resolve_model, load_model: base model folders and the embedded defaults
  executor   Executor: where independent items run (this process, or Ray)

The other modules serve these: loop (the training loop), generative (the causal-LM objective), inject, metrics,
llm (SmolLM2 GGUF -> HF folder), tasks_pkg (tasks read out of packages), cache (the cache folder).
"""

__all__ = ["baselines", "data", "executor", "fleet", "merge", "models", "probe", "project", "subspace", "train"]
