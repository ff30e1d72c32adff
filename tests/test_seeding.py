"""The one seeding rule (``trainer.seeding``): streams keyed by ``(seed, *keys)``."""

import hashlib

import pytest
import torch

from trainer.seeding import derive_seed, generator, normal


def test_streams_are_a_pure_function_of_seed_and_keys():
    # The documented rule, byte for byte.
    h = hashlib.blake2b(digest_size=8)
    for part in (b"flash-grpo-seed/v1", b"\x1f", b"i0", b"\x1f", b"s4:plan", b"\x1f", b"i0"):
        h.update(part)
    assert derive_seed(0, "plan", 0) == int.from_bytes(h.digest(), "little") & (2**63 - 1) == 7870250062438872219
    # Deterministic, and independent of what was drawn before or in which order streams are used.
    a = normal((64,), 3, "noise", 5, 2, -1)
    torch.randn(10)  # the global RNG plays no part
    other = [normal((64,), 3, "noise", it, s, j) for it in range(3) for s in range(4) for j in (-1, 0, 1)]
    assert torch.equal(a, normal((64,), 3, "noise", 5, 2, -1))
    assert torch.equal(other[::-1][0], normal((64,), 3, "noise", 2, 3, 1))
    assert torch.equal(torch.randperm(9, generator=generator(1, "prompts", 4)),
                       torch.randperm(9, generator=generator(1, "prompts", 4)))
    # Distinct keys (seed, purpose, any index, its position, int vs str) give distinct streams.
    keys = [(0, "plan", 0), (1, "plan", 0), (0, "plan", 1), (0, "minibatch", 0), (0, "noise", 0, 1, 2),
            (0, "noise", 0, 2, 1), (0, "noise", 1, 0, 2), (0, "noise", 0, 1, -1), (0, "prompts", "split"),
            (0, "prompts", 0), (0, "prompts", "0"), (0, "lora_init"), (0, "lora_init", 0), (0,)]
    seeds = [derive_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys) and all(0 <= s < 2**63 for s in seeds)
    draws = [normal((32,), *k) for k in keys]
    assert all(not torch.equal(draws[i], draws[j]) for i in range(len(keys)) for j in range(i))
    with pytest.raises(TypeError):
        derive_seed(0, 1.5)
