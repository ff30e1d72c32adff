"""The training engine: config and presets, prompts, Wan models, LoRA, strategies, rollouts, the
recipe, checkpoints and the run directory. It imports the math, the rewards and the toy world,
never the process boundary (``trainer.service``) or the node types (``trainer.graph``)."""
