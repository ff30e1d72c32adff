"""ComfyUI glue: registers the pack's node types and connects them to ComfyUI.

The node types themselves live in ``trainer.node_types`` (shared with the headless runner).
Here, ComfyUI's progress bar, interrupt flag and model folders are installed as the host.
Outside ComfyUI (unit tests importing the pack) the headless host stays in place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..trainer import host
from ..trainer.node_types import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

log = logging.getLogger(__name__)

LORA_SUBFOLDER = "flash_grpo"


class ComfyHost(host.Host):
    """ComfyUI's progress bar, interrupt, input folder, output folder and LoRA list."""

    def __init__(self, folder_paths, comfy_utils, model_management):
        self.folder_paths = folder_paths
        self.utils = comfy_utils
        self.mm = model_management
        self._bars = {}

    def progress(self, node_id, done, total, event=None):
        bar = self._bars.get(node_id)
        if bar is None or bar.total != total:
            bar = self._bars[node_id] = self.utils.ProgressBar(total, node_id=node_id)
        bar.update_absolute(done, total)

    def interrupted(self) -> bool:
        return bool(self.mm.processing_interrupted())

    def input_file(self, name: str) -> Path:
        base = Path(self.folder_paths.get_input_directory()).resolve()
        path = (base / name).resolve()
        if base not in path.parents or not path.is_file():
            from ..trainer.errors import UserError

            raise UserError(f"{name!r} is not a file inside ComfyUI's input folder ({base}).")
        return path

    def runs_dir(self, configured: str) -> Path:
        if Path(configured).is_absolute():
            return Path(configured)
        return Path(self.folder_paths.get_output_directory()) / "flash_grpo" / configured

    def publish_lora(self, lora_path: Path) -> str:
        """Copy the LoRA into models/loras/flash_grpo/ so LoraLoader lists it; return its list name."""
        import shutil

        loras = Path(self.folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER
        loras.mkdir(parents=True, exist_ok=True)
        target = loras / Path(lora_path).name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(lora_path, tmp)
        tmp.replace(target)
        return f"{LORA_SUBFOLDER}/{target.name}"


def _install_comfy_host() -> None:
    try:
        import comfy.model_management as model_management
        import comfy.utils as comfy_utils
        import folder_paths
    except ImportError:  # not running inside ComfyUI
        return
    host.install(ComfyHost(folder_paths, comfy_utils, model_management))


_install_comfy_host()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
