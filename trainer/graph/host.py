"""What a node needs from the program running it: where jobs run, progress, interrupt, folders,
model lists.

The node types in ``trainer.graph.node_types`` run in two hosts: the headless runner
(``python -m trainer.run``) and ComfyUI (``nodes/`` installs a ComfyUI host at import). Nodes
only talk to ``current()``; they never import ComfyUI themselves.

Where the nodes' jobs (train, sample, score) run is the host's choice, made once: its
``runner(gpus)`` is the backend trainer process unless the host runs ``in_process``
(``python -m trainer.run --in-process``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..service.runner import Runner


class Host:
    """Headless defaults: jobs in the backend, paths relative to the working directory (made
    absolute here, before a job leaves this process), no UI, no ComfyUI models."""

    in_process = False
    """Run the jobs in this process instead of the backend trainer process (one CPU/GPU)."""

    reuse_finished_runs = False
    """A Trainer whose settings match a finished run returns that run instead of training again
    (ComfyUI: re-queueing a graph). Headless, every call trains (unnamed runs get a new name)."""

    detached = False
    """A backend this host starts outlives it (else it stops once this process has exited)."""

    def runner(self, gpus: int = 1) -> Runner:
        """The runner of the nodes' jobs on ``gpus`` processes (one per process count, kept)."""
        from ..service.runner import make_runner  # the engine loads on the first job, not at import

        runners = self.__dict__.setdefault("_runners", {})
        if gpus not in runners:
            runners[gpus] = make_runner(gpus, in_process=self.in_process, detached=self.detached)
        return runners[gpus]

    def release_memory(self) -> None:
        """Free what the host itself holds on the GPU before a heavy job (ComfyUI: its loaded models)."""

    def close(self) -> None:
        """Release the runners: shut down a backend this host started (ComfyUI keeps its own)."""
        for r in self.__dict__.pop("_runners", {}).values():
            r.close()

    def progress(self, node_id: str | None, done: int, total: int, event: dict | None = None) -> None:
        """A training run finished iteration ``done`` of ``total`` (``event``: its metrics)."""

    def event(self, run: dict, event: dict) -> None:
        """Every event of a training run (queued, start, iteration, done, cancelled, error), for a
        live view. ``run``: ``node``, ``run`` (name), ``run_dir``, ``total``."""

    def interrupted(self) -> bool:
        """True once the user asked to stop (Ctrl-C headless, the Cancel button in ComfyUI)."""
        return False

    def cancelled(self, exc: Exception) -> None:
        """A run stopped on request (``exc``: the ``RunCancelled``); raise what the host expects."""
        raise exc

    def input_file(self, name: str) -> Path:
        """Resolve a file name given in a workflow (a prompt file, say), as an absolute path."""
        path = Path(os.path.abspath(os.path.expanduser(name)))
        if not path.is_file():
            raise UserError(f"file not found: {path} (relative paths are relative to {Path.cwd()})")
        return path

    def input_files(self) -> list[str] | None:
        """Names a file picker offers (ComfyUI's input folder); None = a free text field."""
        return None

    def model_files(self, folder: str) -> list[str]:
        """Model files of a ComfyUI folder kind ("loras", "diffusion_models", "vae", "text_encoders")."""
        return []

    def model_path(self, folder: str, name: str) -> Path:
        """The file behind a name from ``model_files`` (headless: a path, made absolute)."""
        path = Path(os.path.abspath(os.path.expanduser(name)))
        if not path.is_file():
            raise UserError(f"{folder}: file not found: {path}")
        return path

    def runs_dir(self, configured: str) -> Path:
        """The folder that receives run directories (headless: absolute, from the working directory)."""
        return Path(os.path.abspath(os.path.expanduser(configured)))

    def publish_lora(self, lora_path: Path) -> str:
        """Make a finished LoRA available to the host's LoRA loaders; return its display name."""
        return str(lora_path)

    def temp_image(self, png: bytes, prefix: str) -> dict | None:
        """Store a PNG for the node's UI; return ComfyUI's image reference (None: no UI)."""
        return None

    def file_image(self, path: Path) -> dict | None:
        """ComfyUI's image reference of an image file a run wrote (None: no UI)."""
        return None

    def preview(self, node_id: str | None, event: dict, total: int) -> None:
        """A training run wrote held-out preview samples (``event``: the ``preview`` event, with
        ``path`` (animated WebP), ``frame`` (PNG still) and ``iterations_done``)."""

    def model_weight_shapes(self, model) -> dict[str, tuple]:
        """Weight name -> shape of a Wan diffusion model in ComfyUI's naming
        (``blocks.0.self_attn.q.weight``). Headless: a state dict or module in that naming."""
        sd = model if isinstance(model, dict) else model.state_dict()
        return {k.removeprefix("diffusion_model."): tuple(v.shape) for k, v in sd.items()}

    def apply_lora(self, model, lora_path: Path, strength: float):
        """Return ``model`` with the LoRA file applied (ComfyUI's MODEL patching)."""
        raise UserError("applying a LoRA to a MODEL needs ComfyUI (use the LoRA in a ComfyUI workflow).")


_current: Host = Host()


def current() -> Host:
    return _current


def install(host: Host) -> None:
    global _current
    _current = host
