"""ComfyUI glue: registers the pack's node types and connects them to ComfyUI.

The node types themselves live in ``trainer.graph.node_types`` (shared with the headless runner).
Here, ComfyUI's progress bar, interrupt, model folders, LoRA patching and the browser messages
are installed as the host, and the ``/flash_grpo/`` routes are added. Outside ComfyUI (unit tests
importing the pack) the headless host stays in place.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..trainer.errors import UserError
from ..trainer.graph import host
from ..trainer.graph.node_types import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from . import routes

log = logging.getLogger(__name__)

LORA_SUBFOLDER = "flash_grpo"
PROGRESS_EVENT = "flash_grpo.progress"
PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".prompts")
PREVIEW_SIZE = 512  # longest side of the progress bar's preview image


class ComfyHost(host.Host):
    """ComfyUI's progress bar, interrupt, folders, LoRA list and MODEL patching."""

    reuse_finished_runs = True  # a re-queued, unchanged finished training is not trained again

    def __init__(self, folder_paths, comfy_utils, model_management, server=None):
        self.folder_paths = folder_paths
        self.utils = comfy_utils
        self.mm = model_management
        self.server = server  # ComfyUI's PromptServer instance (None in tests)
        self.registry = routes.RunRegistry()
        self._bars = {}
        self._temp_counter = 0

    # --- progress and interrupt -------------------------------------------------------------
    def progress(self, node_id, done, total, event=None):
        bar = self._bars.get(node_id)
        if bar is None or bar.total != total:
            bar = self._bars[node_id] = self.utils.ProgressBar(total, node_id=node_id)
        bar.update_absolute(done, total)

    def event(self, run, event):
        self.registry.update(run, event)
        if self.server is not None:
            try:
                self.server.send_sync(PROGRESS_EVENT, {**run, "event": event})
            except Exception:  # a closed socket must never stop training
                log.debug("flash_grpo: could not send progress", exc_info=True)

    def release_memory(self):
        """Before a backend job: unload ComfyUI's models and return its cached CUDA blocks, so the
        backend has the GPU (ComfyUI reloads its models when it next needs them)."""
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()

    def interrupted(self) -> bool:
        return bool(self.mm.processing_interrupted())

    def cancelled(self, exc):
        """ComfyUI's Cancel: report where the checkpoint is, then raise ComfyUI's interrupt."""
        log.warning("Flash-GRPO: %s", exc)
        self.mm.throw_exception_if_processing_interrupted()
        raise self.mm.InterruptProcessingException()

    # --- folders ----------------------------------------------------------------------------
    def input_file(self, name: str) -> Path:
        base = Path(self.folder_paths.get_input_directory()).resolve()
        path = (base / name).resolve()
        if base not in path.parents or not path.is_file():
            raise UserError(f"{name!r} is not a file inside ComfyUI's input folder ({base}).")
        return path

    def input_files(self) -> list[str]:
        base = Path(self.folder_paths.get_input_directory())
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*")
                      if p.is_file() and p.suffix.lower() in PROMPT_FILE_SUFFIXES)

    def model_files(self, folder: str) -> list[str]:
        return list(self.folder_paths.get_filename_list(folder))

    def model_path(self, folder: str, name: str) -> Path:
        path = self.folder_paths.get_full_path(folder, name)
        if path is None:
            raise UserError(f"{name!r} is not in ComfyUI's {folder} folder(s) "
                            f"{self.folder_paths.get_folder_paths(folder)}; refresh the node list.")
        return Path(path)

    def runs_root(self) -> Path:
        return Path(self.folder_paths.get_output_directory()) / "flash_grpo"

    def runs_dir(self, configured: str) -> Path:
        if Path(configured).is_absolute():
            return Path(configured)
        return self.runs_root() / configured

    def publish_lora(self, lora_path: Path) -> str:
        """Copy the LoRA into models/loras/flash_grpo/ so LoRA loaders list it; return its list name."""
        loras = Path(self.folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER
        loras.mkdir(parents=True, exist_ok=True)
        target = loras / Path(lora_path).name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(lora_path, tmp)
        tmp.replace(target)
        return f"{LORA_SUBFOLDER}/{target.name}"

    def temp_image(self, png: bytes, prefix: str):
        folder = Path(self.folder_paths.get_temp_directory())
        folder.mkdir(parents=True, exist_ok=True)
        self._temp_counter += 1
        name = f"{prefix}_{os.getpid()}_{self._temp_counter:05d}.png"
        (folder / name).write_bytes(png)
        return {"filename": name, "subfolder": "", "type": "temp"}

    def file_image(self, path: Path):
        """A file under ComfyUI's output folder is referenced where it is (``type: output``); one
        elsewhere (a run outside output/) is copied to the temp folder first."""
        path = Path(path).resolve()
        out = Path(self.folder_paths.get_output_directory()).resolve()
        if out in path.parents:
            sub = str(path.parent.relative_to(out)).replace(os.sep, "/")
            return {"filename": path.name, "subfolder": "" if sub == "." else sub, "type": "output"}
        folder = Path(self.folder_paths.get_temp_directory())
        folder.mkdir(parents=True, exist_ok=True)
        self._temp_counter += 1
        name = f"flash_grpo_{os.getpid()}_{self._temp_counter:05d}{path.suffix}"
        shutil.copyfile(path, folder / name)
        return {"filename": name, "subfolder": "", "type": "temp"}

    def preview(self, node_id, event, total):
        """The progress bar's preview: the preview samples' middle frame (ComfyUI sends it to the
        node as its image while it runs); the animated samples reach the page with the event."""
        from PIL import Image

        with Image.open(event["frame"]) as im:
            frame = im.convert("RGB")
        bar = self._bars.get(node_id)
        if bar is None or bar.total != total:
            bar = self._bars[node_id] = self.utils.ProgressBar(total, node_id=node_id)
        bar.update_absolute(int(event.get("iterations_done", 0)), total, ("JPEG", frame, PREVIEW_SIZE))

    # --- ComfyUI's MODEL --------------------------------------------------------------------
    def model_weight_shapes(self, model):
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "state_dict"):
            raise UserError("model: expected ComfyUI's MODEL (from Load Diffusion Model).")
        sd = inner.state_dict()
        return {k[len("diffusion_model."):]: tuple(v.shape) for k, v in sd.items() if k.startswith("diffusion_model.")}

    def apply_lora(self, model, lora_path, strength):
        import comfy.lora
        import comfy.sd

        lora = self.utils.load_torch_file(str(lora_path), safe_load=True)
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        modules = {k.rsplit(".", 2)[0] for k in lora if k.endswith((".lora_A.weight", ".lora_B.weight"))}
        unknown = sorted(m for m in modules if m not in key_map)
        if unknown:
            raise UserError(f"{len(unknown)} LoRA modules have no weight in this MODEL (e.g. {unknown[0]}): "
                            "the LoRA was made for another model.")
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
        return patched


def _install_comfy_host() -> None:
    try:
        import comfy.model_management as model_management
        import comfy.utils as comfy_utils
        import folder_paths
    except ImportError:  # not running inside ComfyUI
        return
    prompt_server = None
    try:
        import server

        prompt_server = getattr(server.PromptServer, "instance", None)
    except ImportError:
        pass
    comfy_host = ComfyHost(folder_paths, comfy_utils, model_management, prompt_server)
    host.install(comfy_host)
    if prompt_server is not None:
        routes.register(prompt_server.routes, comfy_host.runs_root, comfy_host.registry)


_install_comfy_host()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "ComfyHost"]
