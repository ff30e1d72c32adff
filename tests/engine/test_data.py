"""Prompt sets: file parsing, the held-out split and the resumable order."""

import pytest

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


def test_batches_visit_every_prompt_once_per_epoch_and_depend_only_on_the_iteration():
    ps = PromptSet.build([f"p{i}" for i in range(6)], 0, seed=0)
    first_epoch = ps.batch(0, 3) + ps.batch(1, 3)
    assert sorted(first_epoch) == sorted(ps.train)
    assert ps.batch(5, 3) == PromptSet.build([f"p{i}" for i in range(6)], 0, seed=0).batch(5, 3)
    assert ps.batch(0, 3) + ps.batch(1, 3) != ps.batch(2, 3) + ps.batch(3, 3)  # reshuffled per epoch


def test_no_prompts_is_a_clear_error():
    with pytest.raises(UserError, match="no prompts"):
        PromptSet.build(["", "  "], 1, seed=0)
