"""What a node needs from the program running it: progress, interrupt, folders.

The node types in ``trainer.node_types`` run in two hosts: the headless runner
(``python -m trainer.run``) and ComfyUI (``nodes/`` installs a ComfyUI host at import). Nodes
only talk to ``current()``; they never import ComfyUI themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


class Host:
    """Headless defaults: paths relative to the working directory, no UI."""

    def progress(self, node_id: str | None, done: int, total: int, event: dict | None = None) -> None:
        """A training run finished iteration ``done`` of ``total`` (``event``: its metrics)."""

    def interrupted(self) -> bool:
        """True once the user asked to stop (Ctrl-C headless, the Cancel button in ComfyUI)."""
        return False

    def input_file(self, name: str) -> Path:
        """Resolve a file name given in a workflow (a prompt file, say)."""
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise UserError(f"file not found: {path} (relative paths are relative to {Path.cwd()})")
        return path

    def runs_dir(self, configured: str) -> Path:
        """The folder that receives run directories."""
        return Path(os.path.expanduser(configured))

    def publish_lora(self, lora_path: Path) -> str:
        """Make a finished LoRA available to the host's LoRA loaders; return its display name."""
        return str(lora_path)


_current: Host = Host()


def current() -> Host:
    return _current


def install(host: Host) -> None:
    global _current
    _current = host
