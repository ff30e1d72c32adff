"""Third-party rewards registered through the ``flash_grpo.rewards`` entry-point group.

A separate, pip-installed package adds rewards without touching this repository by declaring
entry points in its ``pyproject.toml``::

    [project.entry-points."flash_grpo.rewards"]
    sharpness = "my_rewards.sharp:Sharpness"        # a Reward subclass ...
    clip_score = "my_rewards.clip:make_clip_score"  # ... or a factory returning a Reward

The entry point's *name* becomes the registry name (``build_reward("sharpness")``, or
``{"name": "sharpness"}`` in a workflow's reward list); its *value* is loaded with
:meth:`importlib.metadata.EntryPoint.load` and registered with
:func:`~trainer.rewards.base.register_reward`, so its signature defines the keyword arguments a
reward spec's ``args`` may pass. Security model: only packages the user installed into the Python
environment can add rewards; a workflow names rewards and never carries an import path or code.

Loading is lazy and happens once per process: importing :mod:`trainer.rewards` scans nothing; the
first call of :func:`available_rewards`, :func:`build_reward` or :func:`build_reward_set` from
:mod:`trainer.rewards` (the wrappers below) calls :func:`load_plugins`. A plugin that fails to
import, is not a Reward subclass or callable, or reuses a registered name (built-ins win) is
skipped with a logged warning naming it; it never breaks the built-in rewards or other plugins.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from typing import Any

from ..errors import UserError
from . import base
from .base import Reward, WeightedSum

__all__ = [
    "ENTRY_POINT_GROUP",
    "load_plugins",
    "loaded_plugins",
    "available_rewards",
    "build_reward",
    "build_reward_set",
]

ENTRY_POINT_GROUP = "flash_grpo.rewards"
"""The entry-point group third-party packages declare their rewards in."""

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_loaded = False
_plugins: dict[str, str] = {}
"""Registry name -> entry-point value (``"module:attr"``) of every plugin registered so far."""


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """All installed entry points of :data:`ENTRY_POINT_GROUP`, sorted by name then value."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: (ep.name, ep.value))


def _register_one(entry_point: importlib.metadata.EntryPoint) -> None:
    """Load and register one entry point; log a warning and return if anything is wrong."""
    label = f"reward plugin {entry_point.name!r} ({entry_point.value})"
    name = entry_point.name
    if name in base._REGISTRY:
        logger.warning("%s skipped: the name %r is already registered; rename the entry point.", label, name)
        return
    try:
        factory = entry_point.load()
    except Exception as exc:  # noqa: BLE001 -- any import-time failure of third-party code
        logger.warning("%s failed to load and is skipped: %s: %s", label, type(exc).__name__, exc)
        return
    is_reward_class = isinstance(factory, type) and issubclass(factory, Reward)
    if isinstance(factory, type) and not is_reward_class:
        logger.warning("%s skipped: %s is a class but not a subclass of trainer.rewards.Reward.",
                       label, factory.__name__)
        return
    if not callable(factory):
        logger.warning("%s skipped: it loads a %s, not a Reward subclass or factory.",
                       label, type(factory).__name__)
        return
    try:
        base.register_reward(name)(factory)
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s could not be registered: %s", label, exc)
        return
    _plugins[name] = entry_point.value


def load_plugins(force: bool = False) -> dict[str, str]:
    """Register every installed ``flash_grpo.rewards`` entry point (once per process).

    Returns ``{registry name: "module:attr"}`` of the plugins registered so far. ``force=True``
    scans again (e.g. after installing a package at run time); already registered plugins are kept,
    and a second entry point with a registered name is skipped with a warning. Never raises for a
    broken plugin: it logs a warning naming the plugin and the cause.
    """
    global _loaded
    with _lock:
        if _loaded and not force:
            return dict(_plugins)
        _loaded = True  # set first: a plugin calling available_rewards() while importing must not recurse
        try:
            entry_points = _entry_points()
        except Exception as exc:  # noqa: BLE001 -- a corrupt installed distribution
            logger.warning("could not list %r entry points: %s", ENTRY_POINT_GROUP, exc)
            return dict(_plugins)
        for entry_point in entry_points:
            if _plugins.get(entry_point.name) == entry_point.value:
                continue  # already registered by an earlier scan
            _register_one(entry_point)
        return dict(_plugins)


def loaded_plugins() -> dict[str, str]:
    """``{registry name: "module:attr"}`` of the plugins registered so far (does not scan)."""
    with _lock:
        return dict(_plugins)


def _refuse_import_path(name: Any) -> None:
    """A clear :class:`UserError` for an unregistered name that looks like code to import."""
    if isinstance(name, str) and name not in base._REGISTRY and any(c in name for c in ":./\\"):
        raise UserError(
            f"Reward {name!r} looks like an import path or file. Workflows name registered rewards only "
            "and never load code: install the package that provides the reward (it registers it through "
            f"the {ENTRY_POINT_GROUP!r} entry-point group) and use its name. "
            f"Available rewards: {', '.join(base.available_rewards())}."
        )


def available_rewards() -> list[str]:
    """Sorted names accepted by :func:`build_reward`: built-ins plus installed plugins."""
    load_plugins()
    return base.available_rewards()


def build_reward(name: str, **kwargs: Any) -> Reward:
    """:func:`trainer.rewards.base.build_reward` after loading the installed plugins."""
    load_plugins()
    _refuse_import_path(name)
    return base.build_reward(name, **kwargs)


def build_reward_set(specs: Any) -> WeightedSum:
    """:func:`trainer.rewards.base.build_reward_set` after loading the installed plugins."""
    return _reward_set(specs, check_only=False)


def check_reward_set(specs: Any) -> None:
    """Every check :func:`build_reward_set` makes on ``specs`` (names, weights, argument names),
    without building the rewards: no reward model is loaded in this process."""
    _reward_set(specs, check_only=True)


def _reward_set(specs: Any, check_only: bool) -> WeightedSum | None:
    load_plugins()
    for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
        _refuse_import_path(spec.get("name") if isinstance(spec, dict) else spec)
    return base.build_reward_set(specs, check_only=check_only)
