"""Training stage: GPT-2 from scratch with accelerate, exact resume after preemption. Never imports Prefect.

Modules: `config` (TrainConfig), `presets` (models from config), `data` (token files, stateful loader),
`checkpoint` (atomic local / GCS checkpoints), `loop` (the training loop), `launch` (supervising an
`accelerate launch` child), `cli` (`codeparrot train`).
"""
