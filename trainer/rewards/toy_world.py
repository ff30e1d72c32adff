"""Exact rewards of the toy world (``trainer.toy.world``): does the video show what the caption asks?

Registered names (float videos, higher is better, 0..1):

* ``toy_colour``, ``toy_shape``, ``toy_size``, ``toy_position``, ``toy_direction``,
  ``toy_speed``, ``toy_background``: the probability that ``trainer.toy.world.attribute_probs``
  gives the choice the prompt asks for that attribute (0 when no object shows). Every prompt must
  state the attribute (``UserError`` otherwise).
* ``toy_caption``: the mean of those probabilities over the attributes each prompt states.
  Details: each attribute stated by every prompt (its probability) and ``accuracy``, the fraction
  of stated attributes whose exact reading (the argmax) is the asked choice.

They read pixels only (``trainer.toy.world.measure``), so they score any video, not only the toy
model's; weight them like any other reward, e.g.
``[{"name": "toy_colour", "weight": 1}, {"name": "toy_direction", "weight": 0.5}]``.
"""

from __future__ import annotations

import functools

import torch

from ..errors import UserError
from ..toy import world as toy_world
from .base import Reward, RewardOutput, register_reward

_EXAMPLE = toy_world.caption({
    "size": "small", "colour": "red", "shape": "bar", "position": "left", "direction": "up",
    "speed": "slow", "background": "black",
})


class ToyWorldReward(Reward):
    """Probability that the video shows the caption's choice of ``attributes`` (their mean)."""

    input_format = "float"

    def __init__(self, name: str, attributes: tuple[str, ...]):
        self.name = name
        self.attributes = tuple(attributes)
        self.single = len(self.attributes) == 1

    def _asked(self, prompts: list[str]) -> list[dict[str, str]]:
        """Per prompt, the choices it asks for among ``self.attributes``; UserError if none."""
        asked = []
        for p in prompts:
            parsed = {a: c for a, c in toy_world.parse_caption(p).items() if a in self.attributes}
            if not parsed:
                what = f"no {self.attributes[0]}" if self.single else f"none of {', '.join(self.attributes)}"
                raise UserError(f"{self.name}: the prompt {p!r} states {what}. This reward scores "
                                f"toy-world captions such as {_EXAMPLE!r}.")
            asked.append(parsed)
        return asked

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        asked = self._asked(prompts)
        videos = videos.cpu()
        measurement = toy_world.measure(videos)
        probs = toy_world.attribute_probs(measurement)
        n = len(prompts)
        total, correct, count = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        per_attr = {a: torch.full((n,), float("nan")) for a in self.attributes}
        for i, wanted in enumerate(asked):
            for attr, choice in wanted.items():
                k = toy_world.CHOICES[attr].index(choice)
                p = probs[attr][i]
                per_attr[attr][i] = p[k]
                total[i] += p[k]
                correct[i] += float(p.sum() > 0 and int(p.argmax()) == k)
                count[i] += 1
        scores = total / count
        # What each video shows, all seven attributes (None: no object), whether it still shows an
        # object of the asked colour on the asked background, and where a direction is asked, how
        # far the object moves along it (fraction of the side per frame): for people, in summary.json.
        readings = [{**r, "object_kept": k} for r, k in zip(
            toy_world.read_attributes(videos, measurement), toy_world.objects_kept(videos, prompts, measurement))]
        directions = [toy_world.parse_caption(p).get("direction") for p in prompts]
        along = toy_world.motion_along(measurement, [d or "right" for d in directions])  # "right": unread
        for reading, direction, a, found in zip(readings, directions, along.tolist(), measurement.found.tolist()):
            if direction is not None:
                reading["motion_along"] = a if found else None
        if self.single:
            return RewardOutput(scores, readings=readings)
        details = {a: v for a, v in per_attr.items() if not v.isnan().any()}
        details["accuracy"] = correct / count
        return RewardOutput(scores, details, readings)


# Registered as factories without arguments (build_reward passes none): the name fixes the attributes.
register_reward("toy_caption")(functools.partial(ToyWorldReward, "toy_caption", toy_world.ATTRIBUTES))
for _attr in toy_world.ATTRIBUTES:
    register_reward(f"toy_{_attr}")(functools.partial(ToyWorldReward, f"toy_{_attr}", (_attr,)))
