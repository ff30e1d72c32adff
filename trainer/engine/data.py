"""Prompt sets: loading, the held-out split, and the deterministic order of training prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import seeding
from ..errors import UserError

DEFAULT_PROMPTS = [
    "a red ball rolls to the left on a white background",
    "a blue square moves up slowly over a dark floor",
    "a green triangle spins fast in the bright sky",
    "a yellow cat runs across the grass at sunset",
    "a black dog jumps over a small fence in the rain",
    "an orange car drives down a long empty road at night",
    "a purple flower opens in the morning light",
    "waves crash on a sandy beach under a grey cloudy sky",
]
"""Used when a config names neither prompts nor a prompt file (the tiny demo)."""


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file not found: {p}. Give a text file with one prompt per line.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {p} is not UTF-8 text (a binary file?). Give a text file with one prompt "
                        "per line.") from None
    if "\0" in text:
        raise UserError(f"prompt file {p} holds NUL bytes, so it is not a text file. Give a text file with one "
                        "prompt per line.")
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {p} holds no prompts (one per line; # starts a comment).")
    return prompts


@dataclass
class PromptSet:
    """Training prompts and held-out evaluation prompts.

    The held-out split takes ``eval_count`` distinct prompts from a shuffle of the distinct prompts
    drawn from the stream ``(seed, "prompts", "split")`` (``trainer.seeding``); the rest train, a
    repeated prompt as often as it is listed, and no copy of a held-out prompt trains. The prompts
    of iteration ``it`` are a pure function of ``(seed, it)``: epoch ``e`` visits the training
    prompts in the permutation drawn from ``(seed, "prompts", e)``. Resuming at an iteration
    therefore needs no saved data-loader state.
    """

    train: list[str]
    eval: list[str]
    seed: int = 0

    @classmethod
    def build(cls, prompts: list[str], eval_count: int, seed: int) -> "PromptSet":
        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise UserError("no prompts: give 'prompts' or a 'prompt_file' with one prompt per line.")
        distinct = list(dict.fromkeys(prompts))
        if len(distinct) == 1 or eval_count <= 0:
            return cls(train=prompts, eval=distinct[: min(eval_count, len(distinct))], seed=seed)
        order = torch.randperm(len(distinct), generator=seeding.generator(seed, "prompts", "split")).tolist()
        eval_count = min(eval_count, len(distinct) - 1)
        held = [distinct[i] for i in sorted(order[:eval_count])]
        # every copy of a held-out prompt leaves training: held-out prompts are never trained on
        held_set = set(held)
        return cls(train=[p for p in prompts if p not in held_set], eval=held, seed=seed)

    def batch(self, iteration: int, size: int) -> list[str]:
        """The ``size`` training prompts of ``iteration``."""
        n = len(self.train)
        out = []
        for pos in range(iteration * size, (iteration + 1) * size):
            epoch, idx = divmod(pos, n)
            perm = torch.randperm(n, generator=seeding.generator(self.seed, "prompts", epoch))
            out.append(self.train[int(perm[idx])])
        return out
