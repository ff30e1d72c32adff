"""The math: pure tensor functions of flow-matching SDE sampling (``sde``) and of the GRPO
objective (``grpo``). Nothing here imports the rest of the project."""
