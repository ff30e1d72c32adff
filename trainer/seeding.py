"""The one seeding rule: every random draw of a run comes from a stream named by ``(seed, *keys)``.

    derive_seed(seed, *keys) = first 8 bytes (little-endian) of BLAKE2b-64 over
                               "flash-grpo-seed/v1" + the keys' canonical encoding, masked to 63 bits

where ``seed`` and each key is an ``int`` (encoded ``i<decimal>``, negatives allowed) or a ``str``
(encoded ``s<length>:<text>``), joined by ``0x1f``. ``generator(seed, *keys)`` is a
``torch.Generator`` seeded with it (on CPU unless a device is given: the noise of a run on CUDA
is drawn on the GPU, whose generator gives other numbers than the CPU's for the same seed, so a
run repeats exactly on the same kind of device). The streams a run uses (the first key names the purpose):

* ``("plan", iteration)``: the strategy's step plan of an iteration (``k`` per group, DanceGRPO's
  trained steps);
* ``("noise", iteration, sample, step)``: Gaussian noise of one global sample; ``step = -1`` is its
  initial noise, ``step = j`` the SDE noise of step ``j``; ``iteration = -1`` are the before/after
  evaluation samples;
* ``("prompts", "split")`` the held-out split, ``("prompts", epoch)`` the order of the training
  prompts in that epoch;
* ``("minibatch", iteration)``: the order of the trained transitions before they are split into
  minibatches;
* ``("lora_init",)``: the LoRA's initial ``lora_A``.

So every draw is a pure function of the seed and of where it happens (iteration, sample, step),
never of the order of the calls or of the number of processes: a resumed run repeats what an
uninterrupted one draws, and N processes draw what one process draws. A cryptographic hash keeps
streams of different keys apart (no linear relation between neighbouring seeds).
"""

from __future__ import annotations

import hashlib

import torch

_DOMAIN = b"flash-grpo-seed/v1"


def _encode(key: int | str) -> bytes:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"seed keys are int or str, got {type(key).__name__} {key!r}")
    if isinstance(key, int):
        return b"i" + str(key).encode()
    data = key.encode()
    return b"s" + str(len(data)).encode() + b":" + data


def derive_seed(seed: int, *keys: int | str) -> int:
    """The 63-bit seed of the stream ``(seed, *keys)`` (see the module docstring for the rule)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(_DOMAIN)
    for key in (seed, *keys):
        h.update(b"\x1f")
        h.update(_encode(key))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def generator(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (CPU by default) for the stream ``(seed, *keys)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def normal(shape: tuple, seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` from the stream ``(seed, *keys)``, drawn on
    ``device`` (CPU by default)."""
    return torch.randn(shape, generator=generator(seed, *keys, device=device), device=device)
