"""Prompt sets: file parsing, the held-out split and the resumable order."""

import pytest
import torch

from trainer import seeding
from trainer.engine.data import PromptSet, read_prompt_file
from trainer.errors import UserError


def test_prompt_file_skips_blank_lines_and_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\na cat\n\n  a dog  \n#skip\na bird\n")
    assert read_prompt_file(f) == ["a cat", "a dog", "a bird"]
    with pytest.raises(UserError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


def test_held_out_split_is_disjoint_and_seeded():
    prompts = [f"p{i}" for i in range(10)]
    a = PromptSet.build(prompts, 3, seed=1)
    assert len(a.eval) == 3 and len(a.train) == 7 and not set(a.eval) & set(a.train)
    assert PromptSet.build(prompts, 3, seed=1) == a
    assert PromptSet.build(prompts, 3, seed=2).eval != a.eval
    assert PromptSet.build(["only"], 2, seed=0).train == ["only"]  # one prompt trains and evaluates


def test_a_repeated_prompt_is_held_out_whole_or_trained_on_whole():
    """A prompt listed twice is never both held out and trained on (the held-out score would then
    measure training prompts); without repeats the split is the plain seeded shuffle's, so runs
    made before repeats were handled resume with the same split."""
    prompts = [f"p{i}" for i in range(8)]
    repeated = prompts + prompts[:4]  # p0..p3 twice
    for seed in range(20):
        split = PromptSet.build(repeated, 3, seed=seed)
        assert len(split.eval) == len(set(split.eval)) == 3 and not set(split.eval) & set(split.train), seed
        assert len(split.train) == len(repeated) - sum(repeated.count(p) for p in split.eval)
        order = torch.randperm(8, generator=seeding.generator(seed, "prompts", "split")).tolist()
        plain = PromptSet.build(prompts, 3, seed=seed)
        assert plain.eval == [prompts[i] for i in sorted(order[:3])]
        assert plain.train == [prompts[i] for i in sorted(order[3:])]


def test_batches_visit_every_prompt_once_per_epoch_and_depend_only_on_the_iteration():
    ps = PromptSet.build([f"p{i}" for i in range(6)], 0, seed=0)
    first_epoch = ps.batch(0, 3) + ps.batch(1, 3)
    assert sorted(first_epoch) == sorted(ps.train)
    assert ps.batch(5, 3) == PromptSet.build([f"p{i}" for i in range(6)], 0, seed=0).batch(5, 3)
    assert ps.batch(0, 3) + ps.batch(1, 3) != ps.batch(2, 3) + ps.batch(3, 3)  # reshuffled per epoch


def test_no_prompts_is_a_clear_error():
    with pytest.raises(UserError, match="no prompts"):
        PromptSet.build(["", "  "], 1, seed=0)
