"""The pack's node types, defined once for ComfyUI and for the headless runner.

Classic ComfyUI node classes (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, tooltips). They
import nothing from ComfyUI: what differs between hosts (progress, interrupt, folders, model lists,
applying a LoRA to ComfyUI's MODEL) goes through ``trainer.graph.host.current()``. ComfyUI registers them
from ``nodes/``; ``python -m trainer.run`` executes workflows made of them. The tooltips are the
user documentation.

Custom socket types:

* ``FLASH_MODEL``: which Wan model to train (a dict: ``model``, ``device``, ``dtype``, ``gpus``).
* ``FLASH_PROMPTS``: the prompt set (``prompts``, ``prompt_file``, ``eval_prompts``).
* ``FLASH_REWARD``: a list of reward specs ``{"name", "weight", "args"}``, summed.

The trainer's and the group sampler's ``model`` input also takes ComfyUI's ``MODEL`` from Load
Diffusion Model (``UNETLoader``), with ``clip`` from Load CLIP and ``vae`` from Load VAE. Those
inputs are lazy and never evaluated for training or sampling: the node reads the chosen file names
from the prompt graph (hidden ``PROMPT``) and the backend loads the files itself, so ComfyUI does
not load the Wan model. Only the trainer's ``model`` output (the MODEL with the trained LoRA
applied) makes ComfyUI load it, when something uses that output.

The group sampler and the reward scorer use ComfyUI's list outputs/inputs (one video per list
item); they run in ComfyUI, not in the headless runner.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

from .. import settings
from ..engine.config import PRESETS, STRATEGIES, FlashGRPOConfig
from ..engine.models import (
    COMFY_MODEL_SUFFIX,
    CONFIGS_DIR,
    TINY_MODEL,
    TOY_MODEL,
    resolve_model,
    write_comfy_manifest,
)
from ..errors import UserError
from ..rewards import available_rewards, check_reward_set
from ..service.runner import JobAbandoned, RunCancelled, RunResult
from . import host

CATEGORY = "Flash-GRPO"
MODEL_ENV = settings.MODEL_ENV
NO_FILE = "none"
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Run names the trainer accepts and the web routes look up (no separators, no '..')."""


def _check_model(model: str) -> None:
    """Fail early (before any heavy work) when a model folder is missing or malformed."""
    if model == TINY_MODEL:
        return
    path = Path(os.path.expanduser(resolve_model(model)))
    if model.endswith(COMFY_MODEL_SUFFIX):
        if not path.is_file():
            raise UserError(f"ComfyUI model manifest not found: {path}")
        return
    if not path.is_dir():
        raise UserError(
            f"model folder not found: {path}\n"
            f"Download Wan2.1-T2V-1.3B-Diffusers (or 14B) to a local folder and point at it: the "
            f"workflow's model input, `--model PATH` of trainer.run, or the {MODEL_ENV} environment "
            "variable. Use model 'tiny' for the built-in test model, or the node 'Flash-GRPO Model "
            "from ComfyUI Files' for the files in ComfyUI's models folder."
        )
    missing = [n for n in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer") if not (path / n).exists()]
    if missing:
        raise UserError(
            f"{path} is not a diffusers Wan folder: missing {', '.join(missing)} (expected the "
            "layout of Wan2.1-T2V-1.3B-Diffusers)."
        )


class _LoraList(list):
    """The type of the Trainer's ``lora_name`` output: ComfyUI's LoRA list, so the output links to
    the ``lora_name`` combo of a LoRA loader. A combo input's type is its list of choices, read when
    a prompt is validated, and ComfyUI checks a link with ``received_type != input_type``: this list
    equals the host's current LoRA list, whatever it held when the class was defined."""

    def __eq__(self, other):
        if not isinstance(other, list):
            return False
        loras = list(host.current().model_files("loras"))
        return list(other) in (loras, [NO_FILE] + loras)  # a LoRA loader's list, or an optional LoRA's

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None


LORA_LIST = _LoraList()


def _runner(gpus: int = 1):
    """The host's runner for a heavy job, after the host freed what it holds (ComfyUI's models)."""
    h = host.current()
    h.release_memory()
    return h.runner(gpus)


def _file_fingerprint(path: Path, content: bool = False) -> str:
    """What ``IS_CHANGED`` returns for a file: its size and modification time, or (``content``,
    small files) a hash of its bytes."""
    if content:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a JSON object like {{\"kl_beta\": 0.004}}")
    return value


def _hardware_inputs() -> dict:
    return {
        "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip": "auto = CUDA when available."}),
        "dtype": (["auto", "bfloat16", "float32"], {"default": "auto", "tooltip":
            "Weights/autocast dtype; auto = bfloat16 on CUDA, float32 on CPU. SDE math is always float32."}),
        "gpus": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "GPUs (processes) the training backend uses."}),
    }


MODEL_TYPES = "FLASH_MODEL,MODEL"
"""The ``model`` input of the trainer and the sampler: a Flash-GRPO model source, or ComfyUI's MODEL."""

STOCK_LOADERS = {  # input -> (loader class, its file input, ComfyUI folder, its title in the menu)
    "model": ("UNETLoader", "unet_name", "diffusion_models", "Load Diffusion Model"),
    "clip": ("CLIPLoader", "clip_name", "text_encoders", "Load CLIP"),
    "vae": ("VAELoader", "vae_name", "vae", "Load VAE"),
}


def _model_inputs() -> tuple[dict, dict]:
    """The required ``model`` and the optional ``clip`` / ``vae`` inputs (all lazy: see the module doc)."""
    required = {"model": (MODEL_TYPES, {"lazy": True, "tooltip":
        "A Flash-GRPO model source, or the MODEL of Load Diffusion Model (UNETLoader; then connect Load CLIP "
        "and Load VAE too). The backend loads the chosen files itself; ComfyUI does not load them for this node."})}
    optional = {
        "clip": ("CLIP", {"lazy": True, "tooltip": "With a MODEL input: Load CLIP (CLIPLoader, type wan) with the "
                          "umt5_xxl text encoder; its file is loaded by the backend."}),
        "vae": ("VAE", {"lazy": True, "tooltip": "With a MODEL input: Load VAE (VAELoader) with the Wan2.1 VAE; its "
                        "file is loaded by the backend."}),
    }
    return required, optional


def _linked(prompt: dict | None, node_id, name: str) -> tuple[str, int, dict] | None:
    """``(source id, output index, source node)`` of input ``name`` of node ``node_id`` in the
    prompt graph, or None when it is not linked."""
    node = (prompt or {}).get(str(node_id)) or {}
    value = (node.get("inputs") or {}).get(name)
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
        return str(value[0]), int(value[1]), prompt[str(value[0])]
    return None


def _output_used(prompt: dict | None, node_id, index: int) -> bool:
    """Whether any node of the prompt graph takes output ``index`` of node ``node_id``."""
    return any(isinstance(v, list) and len(v) == 2 and str(v[0]) == str(node_id) and v[1] == index
               for node in (prompt or {}).values() for v in (node.get("inputs") or {}).values())


def _model_value_needed(prompt: dict | None, node_id, model_output: int | None = None) -> bool:
    """``check_lazy_status`` of the ``model`` input: evaluate it when it comes from a Flash-GRPO
    model source, or from Load Diffusion Model when the node's MODEL output (``model_output``) is
    used; never for another MODEL node (``_model_source`` refuses it without loading anything)."""
    link = _linked(prompt, node_id, "model")
    if link is None:
        return True  # ComfyUI reports what is wrong with it
    source = link[2].get("class_type")
    if source == STOCK_LOADERS["model"][0]:
        return model_output is not None and _output_used(prompt, node_id, model_output)
    return source in NODE_CLASS_MAPPINGS


def _comfy_files_model(diffusion_model: str, vae: str, text_encoder: str, config: str = "auto",
                       device: str = "auto", dtype: str = "auto", gpus: int = 1) -> dict:
    """The ``FLASH_MODEL`` of ComfyUI model files (names in ComfyUI's model lists): a manifest the
    backend loads them from (``write_comfy_manifest``)."""
    h = host.current()
    for label, value in (("diffusion_model", diffusion_model), ("vae", vae), ("text_encoder", text_encoder)):
        if value in ("", NO_FILE):
            raise UserError(f"{label}: pick a file (ComfyUI's models folders list them).")
    paths = [h.model_path(folder, name) for folder, name in (
        ("diffusion_models", diffusion_model), ("vae", vae), ("text_encoders", text_encoder))]
    # Named after the diffusion model and a hash of all three files and the config: another VAE or
    # text encoder is another model value, so a finished run is not returned for it (finished_run).
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(diffusion_model).stem)
    digest = hashlib.sha256(json.dumps([*map(str, paths), config]).encode()).hexdigest()[:8]
    manifest = h.runs_dir("models") / f"{stem}-{digest}{COMFY_MODEL_SUFFIX}"
    write_comfy_manifest(manifest, *paths, config=config)
    return {"model": str(manifest), "device": device, "dtype": dtype, "gpus": int(gpus)}


def _model_source(model, prompt: dict | None, node_id) -> dict:
    """The ``FLASH_MODEL`` a trainer or sampler works on: its ``model`` input when that is a
    Flash-GRPO model source, else the files chosen in the Load Diffusion Model, Load CLIP and Load
    VAE nodes linked to it (read from the prompt graph; ``UserError`` naming the fix otherwise)."""
    if isinstance(model, dict):
        extra = [n for n in ("clip", "vae") if _linked(prompt, node_id, n)]
        if extra:
            raise UserError(f"{' and '.join(extra)}: used only with a MODEL from Load Diffusion Model; a Flash-GRPO "
                            "model source brings its own text encoder and VAE. Disconnect them.")
        return model
    names = {}
    for name, (cls, field, _folder, title) in STOCK_LOADERS.items():
        link = _linked(prompt, node_id, name)
        if link is None:
            if name == "model":
                raise UserError("model: connect a Flash-GRPO model source or Load Diffusion Model (UNETLoader).")
            raise UserError(f"{name}: a MODEL from Load Diffusion Model needs {title} ({cls}) connected to {name} as "
                            "well: the backend loads the umt5 text encoder and the Wan VAE files itself.")
        src_id, _, src = link
        if src.get("class_type") != cls:
            raise UserError(
                f"{name}: it comes from {src.get('class_type')} (node {src_id}), but it must come straight from "
                f"{title} ({cls}). The backend loads the model files itself, so whatever a node in between "
                "changes (a LoRA, a patch, a shift) would be lost: connect the loader directly, train on the "
                "base model, and apply LoRAs to the result (the trainer's model or lora_name output).")
        value = (src.get("inputs") or {}).get(field)
        if not isinstance(value, str):
            raise UserError(f"{title} (node {src_id}): choose its {field} on the node itself (not from a link).")
        names[name] = value
    return _comfy_files_model(names["model"], names["vae"], names["clip"])


class FlashGRPOModelSource:
    """Which Wan2.1 text-to-video model to align, and on what hardware."""

    DESCRIPTION = "Selects the Wan2.1 T2V model (built-in tiny model or a diffusers folder) the trainer aligns."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("STRING", {"default": TINY_MODEL, "tooltip":
                "'tiny' for the built-in test model, 'toy' for the shipped pretrained toy model "
                "(it follows captions like 'a small red bar on the left moves up slowly on a "
                "black background'), or the path of a local diffusers Wan2.1 T2V "
                "folder (e.g. Wan2.1-T2V-1.3B-Diffusers; a relative path is relative to ComfyUI's working "
                "folder, and sent to the backend as an absolute one). Headless, --model or FLASH_GRPO_MODEL override it."}),
            **_hardware_inputs(),
        }}

    RETURN_TYPES = ("FLASH_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model to train or sample; connect to the trainer or the group sampler.",)
    FUNCTION = "select"
    CATEGORY = CATEGORY

    def select(self, model, device, dtype, gpus):
        model = model.strip()
        _check_model(model)
        if model not in (TINY_MODEL, TOY_MODEL):  # the backend runs in another working directory
            model = str(Path(os.path.expanduser(model)).resolve())
        return ({"model": model, "device": device, "dtype": dtype, "gpus": int(gpus)},)


def _model_choices(folder: str) -> list[str]:
    return [NO_FILE] + list(host.current().model_files(folder))


class FlashGRPOComfyModel:
    """The Wan2.1 model from the files ComfyUI already uses (diffusion model, VAE, umt5)."""

    DESCRIPTION = ("Trains the Wan2.1 T2V model you already use in ComfyUI: the diffusion model, VAE and umt5 "
                   "text encoder files from ComfyUI's models folders (no diffusers download needed).")

    @classmethod
    def INPUT_TYPES(cls):
        configs = ["auto"] + sorted(p.name for p in CONFIGS_DIR.iterdir() if (p / "transformer").is_dir())
        return {"required": {
            "diffusion_model": (_model_choices("diffusion_models"), {"tooltip":
                "Wan2.1 T2V diffusion model from models/diffusion_models, e.g. "
                "wan2.1_t2v_1.3B_fp16.safetensors (the file UNETLoader loads)."}),
            "vae": (_model_choices("vae"), {"tooltip": "Wan2.1 VAE from models/vae: wan_2.1_vae.safetensors."}),
            "text_encoder": (_model_choices("text_encoders"), {"tooltip":
                "umt5_xxl text encoder from models/text_encoders (fp16 or fp8_e4m3fn_scaled; fp8 is "
                "de-quantised to the training dtype). It encodes the training prompts."}),
            "config": (configs, {"default": "auto", "tooltip":
                "Architecture of the diffusion model: auto reads it from the file (shipped Wan2.1 "
                "1.3B/14B configs when they match)."}),
            **_hardware_inputs(),
        }}

    RETURN_TYPES = ("FLASH_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model to train or sample; connect to the trainer or the group sampler.",)
    FUNCTION = "select"
    CATEGORY = CATEGORY

    def select(self, diffusion_model, vae, text_encoder, config, device, dtype, gpus):
        return (_comfy_files_model(diffusion_model, vae, text_encoder, config, device, dtype, gpus),)


class FlashGRPOPrompts:
    """The prompts to align on, typed or from a text file, with a held-out split."""

    DESCRIPTION = "Training prompts (one per line) and how many are held out for before/after evaluation."

    @classmethod
    def INPUT_TYPES(cls):
        files = host.current().input_files()
        file_tip = ("Text file with one prompt per line, from ComfyUI's input folder ('none' = use the "
                    "typed prompts). Used instead of the typed prompts when set.")
        prompt_file = ([NO_FILE] + files, {"default": NO_FILE, "tooltip": file_tip}) if files is not None else (
            "STRING", {"default": "", "tooltip": "Optional text file with one prompt per line ('' or 'none' = "
                       "use the typed prompts). Used instead of the typed prompts when set."})
        return {"required": {
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                "One prompt per line; blank lines and lines starting with # are skipped. Empty = the "
                "prompt file, or the built-in demo prompts when both are empty."}),
            "prompt_file": prompt_file,
            "eval_prompts": ("INT", {"default": 2, "min": 0, "max": 1000, "tooltip":
                "Prompts held out from training for before/after videos and evaluation reward."}),
        }}

    RETURN_TYPES = ("FLASH_PROMPTS",)
    RETURN_NAMES = ("prompts",)
    OUTPUT_TOOLTIPS = ("The prompt set; connect to the trainer or the group sampler.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, prompt_file="", **_):
        """The prompt file's content hash: editing the file re-runs the graph from here."""
        name = (prompt_file or "").strip()
        if not name or name == NO_FILE:
            return ""
        try:
            return _file_fingerprint(host.current().input_file(name), content=True)
        except UserError:
            return ""  # build() reports it

    def build(self, prompts, prompt_file, eval_prompts):
        lines = [line.strip() for line in prompts.splitlines()]
        typed = [line for line in lines if line and not line.startswith("#")]
        name = prompt_file.strip()
        file = str(host.current().input_file(name)) if name and name != NO_FILE else ""
        return ({"prompts": typed, "prompt_file": file, "eval_prompts": int(eval_prompts)},)


class FlashGRPOReward:
    """One reward with its weight; chain several to sum them."""

    DESCRIPTION = "Adds a reward to the reward set (weighted sum of everything chained into it)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (available_rewards(), {"tooltip": "A registered reward (see the README's reward list)."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05, "tooltip":
                    "Weight of this reward in the sum."}),
                "args": ("STRING", {"default": "{}", "tooltip":
                    "Reward arguments as JSON, e.g. {\"rgb\": [255, 0, 0]} for color or {\"every\": 4}."}),
            },
            "optional": {
                "previous": ("FLASH_REWARD", {"tooltip": "Rewards to add this one to."}),
            },
        }

    RETURN_TYPES = ("FLASH_REWARD",)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("The reward set; connect to the trainer, the scorer or another reward.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, reward, weight, args, previous=None):
        try:
            parsed = json.loads(args or "{}")
        except json.JSONDecodeError as e:
            raise UserError(f"reward {reward}: args is not valid JSON ({e}); write e.g. {{\"every\": 4}}") from None
        specs = list(previous or []) + [{"name": reward, "weight": float(weight), "args": parsed}]
        check_reward_set(specs)  # names, weights and argument names now; no reward model loads here
        return (specs,)


def _prompt_list(prompts: dict) -> list[str]:
    from ..engine.data import DEFAULT_PROMPTS, read_prompt_file

    if prompts.get("prompt_file"):
        return read_prompt_file(prompts["prompt_file"])
    return list(prompts.get("prompts") or DEFAULT_PROMPTS)


class FlashGRPOGroupSampler:
    """Samples G videos per prompt exactly as a Flash-GRPO rollout does (one shared SDE step)."""

    DESCRIPTION = ("Iso-temporal group sampling: each prompt's G videos share one SDE step k (the other steps "
                   "are deterministic ODE steps). Outputs one IMAGE [frames,H,W,C] per video, for Preview "
                   "Image / Create Video, and the prompt of each video for the reward scorer. With lora_name "
                   "(e.g. the trainer's output) it samples with that LoRA at lora_strength. Runs in the backend.")

    @classmethod
    def INPUT_TYPES(cls):
        model, model_files = _model_inputs()
        return {"required": {
            **model,
            "prompts": ("FLASH_PROMPTS", {"tooltip": "From Flash-GRPO Prompts; the first num_prompts are sampled."}),
            "num_prompts": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "How many prompts of the set to sample."}),
            "group_size": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Videos per prompt (G)."}),
            "preset": (list(PRESETS), {"default": "flash_grpo_wan2.1_1.3b", "tooltip":
                "Resolution, frames, steps, CFG and noise settings, as in the trainer."}),
            "iteration": ("INT", {"default": 0, "min": 0, "max": 10**6, "tooltip":
                "Which training iteration's step k and noise to reproduce (with the seed)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": "fixed",
                             "tooltip": "Seed of the step choice and the noise (the trainer's seed). Fixed "
                             "unless you set its control to randomize."}),
        }, "optional": {
            "config_overrides": ("STRING", {"multiline": True, "default": "{}", "tooltip":
                "Any other config field as JSON, e.g. {\"sampling_steps\": 20, \"height\": 480}."}),
            "lora_name": ([NO_FILE] + list(host.current().model_files("loras")), {"default": NO_FILE, "tooltip":
                "An aligned LoRA to sample with (models/loras; link the trainer's lora_name here to generate "
                "with what it trained); 'none' = the base model."}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                "Strength of lora_name (1 = as trained; 0 = the base model's videos)."}),
            **model_files,
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("IMAGE", "STRING", "INT", "STRING")
    RETURN_NAMES = ("videos", "prompts", "group_size", "info")
    OUTPUT_IS_LIST = (True, True, False, False)
    OUTPUT_TOOLTIPS = ("One IMAGE batch [frames,H,W,C] per video (prompt-major, G per prompt).",
                       "The prompt of each video.", "G, for the reward scorer.",
                       "JSON: the SDE step k of each prompt's group, the seed and iteration.")
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, lora_name=None, **_):
        """Size and time of the LoRA file (a LoRA republished under the same name samples again)."""
        return FlashGRPOLoraLoader.IS_CHANGED(lora_name=lora_name) if lora_name not in (None, NO_FILE) else ""

    def check_lazy_status(self, model=None, prompt=None, unique_id=None, **_):
        return ["model"] if model is None and _model_value_needed(prompt, unique_id) else []

    def sample(self, model, prompts, num_prompts, group_size, preset, iteration, seed, config_overrides="{}",
               lora_name=NO_FILE, lora_strength=1.0, clip=None, vae=None, prompt=None, unique_id=None):
        model = _model_source(model, prompt, unique_id)
        chosen = _prompt_list(prompts)[: int(num_prompts)]
        values = {"model": model["model"], "device": model["device"], "dtype": model["dtype"],
                  "group_size": int(group_size), "seed": int(seed), "rewards": [{"name": "brightness", "weight": 1.0}]}
        values.update(_json_object(config_overrides, "config_overrides"))
        cfg = FlashGRPOConfig.from_dict(values, preset=preset)
        h = host.current()
        lora = None
        if lora_name and lora_name != NO_FILE:
            lora = {"path": str(h.model_path("loras", lora_name)), "strength": float(lora_strength)}
        try:
            out = _runner(model["gpus"]).sample(cfg, chosen, iteration=int(iteration), should_stop=h.interrupted,
                                                lora=lora)
        except JobAbandoned as exc:
            h.cancelled(exc)
            raise
        videos = [v.float().cpu().contiguous() for v in out.videos]  # each [T, H, W, 3] in 0..1
        per_video = [p for p in chosen for _ in range(int(group_size))]
        steps = [int(k) for k in out.steps] if out.steps is not None else None
        info = {"steps": steps, "prompts": chosen, "seed": int(seed), "iteration": int(iteration),
                "group_size": int(group_size)}
        if lora:
            info["lora"] = {"name": lora_name, "strength": lora["strength"]}
        text = [f"{p[:40]!r}: step k={k}" for p, k in zip(chosen, steps or [None] * len(chosen))]
        if lora:
            text.append(f"LoRA {lora_name} at strength {lora['strength']:g}")
        return {"ui": {"text": text}, "result": (videos, per_video, int(group_size), json.dumps(info))}


def _videos_from_inputs(videos, video, frames_per_video) -> list:
    """IMAGE list items ([T,H,W,C] each, or a flattened batch split every frames_per_video) and
    ComfyUI VIDEO objects -> a list of [T,H,W,C] tensors."""
    out = []
    for item in videos or []:
        if item.ndim != 4:
            raise UserError(f"videos: expected IMAGE tensors [frames,H,W,C], got shape {tuple(item.shape)}")
        if frames_per_video and frames_per_video > 0:
            if item.shape[0] % frames_per_video:
                raise UserError(f"an IMAGE batch of {item.shape[0]} frames cannot be split into videos of "
                                f"{frames_per_video} frames.")
            out.extend(item.split(frames_per_video))
        else:
            out.append(item)
    for v in video or []:
        out.append(v.get_components().images)
    return out


def _plot_png(scores, advantages, group_size) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=100)
    colors = [f"C{i // group_size}" for i in range(len(scores))]
    ax.bar(range(len(scores)), advantages, color=colors)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("video (colour = prompt group)")
    ax.set_ylabel("advantage")
    ax.set_title("scores: " + ", ".join(f"{s:.3g}" for s in scores[:8]) + ("..." if len(scores) > 8 else ""), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class FlashGRPORewardScorer:
    """Scores videos with a reward set and computes their GRPO group advantages."""

    DESCRIPTION = ("Scores each video (IMAGE list from the group sampler, or VIDEO objects) with the reward "
                   "set and shows scores and group advantages A = (r - group mean) / (std + 1e-4).")
    INPUT_IS_LIST = True
    OUTPUT_NODE = True  # its table and chart are the result: ComfyUI runs it with nothing downstream

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reward": ("FLASH_REWARD", {"tooltip": "From Flash-GRPO Reward."}),
            "group_size": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip":
                "Videos per group (G); consecutive videos form a group."}),
            "std_mode": (["group", "global"], {"default": "group", "tooltip":
                "Normalise advantages by each group's std or by the std over all videos."}),
            "clip": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip":
                "Advantages are clipped to +-clip (0 = no clip)."}),
        }, "optional": {
            "videos": ("IMAGE", {"tooltip": "One IMAGE [frames,H,W,C] per video (a list), e.g. the group sampler's output."}),
            "video": ("VIDEO", {"tooltip": "ComfyUI VIDEO objects (from Create Video / Load Video) to score too."}),
            "prompts": ("STRING", {"forceInput": True, "tooltip": "The prompt of each video (the sampler's prompts)."}),
            "frames_per_video": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip":
                "0 = each IMAGE item is one video; N = split IMAGE batches every N frames "
                "(VAE Decode flattens G videos into one batch)."}),
        }}

    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("scores", "advantages", "report")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = ("The reward of each video.", "The group advantage of each video.",
                       "JSON: scores, advantages, per-reward details, groups with signal.")
    FUNCTION = "score"
    CATEGORY = CATEGORY

    def score(self, reward, group_size, std_mode, clip, videos=None, video=None, prompts=None, frames_per_video=None):
        first = lambda v, d=None: (v[0] if isinstance(v, list) and v else d)  # noqa: E731 - list inputs
        reward, g, std_mode, clip = first(reward), int(first(group_size)), first(std_mode), float(first(clip))
        items = _videos_from_inputs(videos, video, int(first(frames_per_video, 0) or 0))
        if not items:
            raise UserError("connect videos (IMAGE list) or video (VIDEO) to score.")
        prompts = list(prompts or [])
        if len(prompts) == 1 and len(items) > 1:
            prompts = prompts * len(items)
        if prompts and len(prompts) != len(items):
            raise UserError(f"{len(prompts)} prompts for {len(items)} videos: give one prompt per video (or one for all).")
        h = host.current()
        try:
            out = _runner().score(reward, items, prompts or [""] * len(items), g, std_mode,
                                  clip if clip > 0 else float("inf"), should_stop=h.interrupted)
        except JobAbandoned as exc:
            h.cancelled(exc)
            raise
        scores = [float(x) for x in out.scores]
        adv = [float(x) for x in out.advantages]
        signal = [bool(x) for x in out.has_signal]
        rows = [f"{i:>3} g{i // g} {s:+.4f} {a:+.3f}" for i, (s, a) in enumerate(zip(scores, adv))]
        report = {"scores": scores, "advantages": adv, "group_size": g,
                  "groups_with_signal": sum(signal[::g]), "details": {k: [float(x) for x in v] for k, v in out.details.items()}}
        ui = {"text": ["  # grp  score     adv", *rows], "flash_grpo_scores": [report]}
        image = host.current().temp_image(_plot_png(scores, adv, g), "flash_grpo_scores")
        if image:
            ui["images"] = [image]
        return {"ui": ui, "result": (scores, adv, json.dumps(report))}


def compact_event(event: dict) -> dict:
    """The part of a run event the web chart needs (numbers only, small)."""
    keys = ("event", "iteration", "iterations", "reward_mean", "reward_std", "loss", "grad_norm",
            "clip_frac", "approx_kl", "kl", "groups_with_signal", "run_dir", "lora", "iterations_done", "cancelled",
            "eval_reward_mean")
    out = {k: event[k] for k in keys if k in event}
    if event.get("event") == "preview" and event.get("path"):
        out["file"] = Path(event["path"]).name  # served by GET /flash_grpo/runs/{run}/samples/{file}
    if isinstance(event.get("seconds"), dict):
        out["seconds"] = event["seconds"].get("total")
    return out


class FlashGRPOTrainer:
    """Runs Flash-GRPO LoRA training and outputs the aligned LoRA."""

    DESCRIPTION = ("Trains a LoRA with Flash-GRPO (or a baseline strategy) toward the reward. Writes a run "
                   "directory with checkpoints, events, sample videos, a reward curve and the LoRA; in ComfyUI "
                   "the LoRA appears in the LoRA loaders' lists (flash_grpo/<run>.safetensors) and the lora_name "
                   "output links to their lora_name; the before/after sheet and the reward curve are IMAGE "
                   "outputs. Given the MODEL of Load Diffusion Model (with Load CLIP and Load VAE), the backend "
                   "trains on those files and the model output is that MODEL with the trained LoRA applied. "
                   "Queueing a finished run again with the same settings returns it without training. "
                   "Cancel keeps the checkpoint: queue again with resume on and the same run_name to continue.")

    MODEL_OUTPUT = 5  # index of the MODEL output (the input MODEL with the LoRA applied)
    LORA_OUTPUT = 6

    @classmethod
    def INPUT_TYPES(cls):
        model, model_files = _model_inputs()
        return {
            "required": {
                **model,
                "prompts": ("FLASH_PROMPTS", {"tooltip": "From Flash-GRPO Prompts."}),
                "reward": ("FLASH_REWARD", {"tooltip": "From Flash-GRPO Reward (chain several to sum)."}),
                "preset": (list(PRESETS), {"default": "flash_grpo_wan2.1_1.3b", "tooltip":
                    "Base values for every setting not on this node (resolution, steps, CFG, ...)."}),
                "strategy": (list(STRATEGIES), {"default": "flash", "tooltip":
                    "flash = Flash-GRPO (one SDE step per prompt); flow_grpo = full trajectory; dance = "
                    "DanceGRPO; mixgrpo = sliding window."}),
                "iterations": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "Training iterations."}),
                "prompts_per_iteration": ("INT", {"default": 8, "min": 1, "max": 1024, "tooltip":
                    "Prompts per iteration (over all GPUs)."}),
                "group_size": ("INT", {"default": 8, "min": 2, "max": 64, "tooltip": "Videos sampled per prompt."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                            "tooltip": "AdamW learning rate of the LoRA."}),
                "lora_rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "LoRA rank (alpha = 2 x rank)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": "fixed",
                                 "tooltip": "Seed of the whole run (plans, noise, prompt order). Fixed unless "
                                 "you set its control to randomize: a new seed is a new run."}),
                "run_name": ("STRING", {"default": "", "tooltip":
                    "Run directory name (letters, digits, . _ -); empty = strategy + a hash of the settings "
                    "in ComfyUI (strategy + time headless). Reuse a name with resume to continue. A finished "
                    "run with the same settings is not trained again: its results are returned."}),
                "resume": ("BOOLEAN", {"default": False, "tooltip":
                    "Continue the run named run_name from its last checkpoint."}),
            },
            "optional": {
                "config_overrides": ("STRING", {"multiline": True, "default": "{}", "tooltip":
                    "Any other config field as JSON, e.g. {\"kl_beta\": 0.004, \"sampling_steps\": 20}."}),
                "preview_every": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip":
                    "Every N iterations sample the first held-out prompts and show them on this node while it "
                    "trains (animated, with the progress bar's preview frame); 0 = off. Costs one held-out "
                    "sampling (and scoring) each time."}),
                **model_files,
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = (LORA_LIST, "STRING", "STRING", "IMAGE", "IMAGE", "MODEL", "LORA_MODEL")
    RETURN_NAMES = ("lora_name", "run_dir", "metrics", "before_after", "reward_curve", "model", "lora")
    OUTPUT_TOOLTIPS = ("The LoRA's name in ComfyUI's loras folder (flash_grpo/<run>.safetensors; a path headless): "
                       "connect it to the lora_name of LoraLoader, LoraLoaderModelOnly or the Aligned LoRA Loader.",
                       "The run directory (checkpoints, events.jsonl, samples, reward curve).",
                       "JSON summary: reward first/last, before/after evaluation.",
                       "The held-out prompts' videos before and after training, side by side (black if "
                       "no prompt was held out).",
                       "The reward curve of the run.",
                       "The MODEL input (from Load Diffusion Model) with the trained LoRA applied at strength 1, "
                       "as ComfyUI's Train LoRA outputs it; needs a MODEL input.",
                       "The trained LoRA's weights (ComfyUI's LORA_MODEL, for Load LoRA Model).")
    OUTPUT_NODE = True
    FUNCTION = "train"
    CATEGORY = CATEGORY

    def check_lazy_status(self, model=None, prompt=None, unique_id=None, **_):
        return ["model"] if model is None and _model_value_needed(prompt, unique_id, self.MODEL_OUTPUT) else []

    def train(self, model, prompts, reward, preset, strategy, iterations, prompts_per_iteration,
              group_size, learning_rate, lora_rank, seed, run_name, resume, config_overrides="{}",
              preview_every=0, clip=None, vae=None, prompt=None, unique_id=None):
        comfy_model = None if isinstance(model, dict) else model  # ComfyUI's MODEL, when it was evaluated
        want_model = _output_used(prompt, unique_id, self.MODEL_OUTPUT)
        if want_model and comfy_model is None:
            raise UserError("the model output (the MODEL with the trained LoRA) needs the model input from Load "
                            "Diffusion Model (UNETLoader). With a Flash-GRPO model source, connect lora_name to "
                            "the Aligned LoRA Loader or the group sampler's lora_name instead.")
        model = _model_source(model, prompt, unique_id)
        overrides = _json_object(config_overrides, "config_overrides")
        values = {
            "model": model["model"], "device": model["device"], "dtype": model["dtype"],
            "prompts": prompts["prompts"], "prompt_file": prompts["prompt_file"],
            "eval_prompts": prompts["eval_prompts"], "rewards": reward, "strategy": strategy,
            "iterations": iterations, "prompts_per_iteration": prompts_per_iteration,
            "group_size": group_size, "learning_rate": learning_rate, "lora_rank": lora_rank,
            "lora_alpha": 2.0 * lora_rank, "seed": seed, "run_name": run_name.strip(),
            "preview_every": int(preview_every),
        }
        values.update(overrides)
        cfg = FlashGRPOConfig.from_dict(values, preset=preset)
        if resume and not cfg.run_name:
            raise UserError("resume needs the run_name of the run to continue.")
        h = host.current()
        cfg.output_dir = str(h.runs_dir(cfg.output_dir))
        if not cfg.run_name:
            cfg.run_name = f"{cfg.strategy}-" + (_settings_hash(cfg) if h.reuse_finished_runs
                                                 else time.strftime("%Y%m%d-%H%M%S"))
        if not RUN_NAME_RE.match(cfg.run_name) or ".." in cfg.run_name:
            raise UserError(f"run_name {cfg.run_name!r}: use letters, digits, '.', '_' and '-' only (no folders).")
        run = {"node": unique_id, "run": cfg.run_name, "run_dir": str(Path(cfg.output_dir) / cfg.run_name),
               "total": cfg.iterations}
        result = finished_run(cfg) if h.reuse_finished_runs else None
        if result is None:
            result = self._run(h, cfg, run, model["gpus"], resume, unique_id)
            note = ""
        else:
            note = " (finished earlier with these settings: not trained again)"
        lora_name = h.publish_lora(result.lora_path) if result.lora_path else ""
        metrics = json.dumps(result.summary, sort_keys=True)
        text = f"{result.iterations_done}/{cfg.iterations} iterations, LoRA {lora_name}{note}"
        pngs = [Path(result.run_dir) / "samples" / "before_after.png", Path(result.run_dir) / "reward_curve.png"]
        webp = Path(result.run_dir) / "samples" / "before_after.webp"  # the held-out videos, animated
        ui = {"text": [text], "flash_grpo_run": [run]}
        images = [h.file_image(webp)] if webp.is_file() else []
        images = [i for i in images + [h.temp_image(p.read_bytes(), "flash_grpo_run") for p in pngs if p.is_file()] if i]
        if images:
            ui["images"] = images
            ui["animated"] = (webp.is_file(),)  # the front end then shows them as <img>, which animates WebP
        patched = h.apply_lora(comfy_model, result.lora_path, 1.0) if want_model else None
        lora_sd = _read_lora(result.lora_path) if _output_used(prompt, unique_id, self.LORA_OUTPUT) else None
        return {"ui": ui, "result": (lora_name, str(result.run_dir), metrics, *(_png_as_image(p) for p in pngs),
                                     patched, lora_sd)}

    @staticmethod
    def _run(h, cfg, run, gpus, resume, unique_id):
        stop_requested: list[Exception] = []

        def on_event(e: dict) -> None:
            h.event(run, compact_event(e))
            if e.get("event") == "preview":
                try:
                    h.preview(unique_id, e, cfg.iterations)
                except Exception as exc:  # as for progress: ComfyUI's interrupt can surface here
                    stop_requested.append(exc)
            if e.get("event") == "iteration":
                try:
                    h.progress(unique_id, e.get("iteration", 0) + 1, cfg.iterations, e)
                except Exception as exc:  # ComfyUI's progress hook raises its interrupt here
                    stop_requested.append(exc)  # cancel the run properly (checkpoint, events)

        h.event(run, {"event": "queued", "iterations": cfg.iterations, "resume": bool(resume)})
        try:
            return _runner(gpus).train(cfg, resume=resume, on_event=on_event,
                                       should_stop=lambda: bool(stop_requested) or h.interrupted())
        except RunCancelled as exc:
            h.cancelled(exc)
            raise
        except UserError as exc:
            h.event(run, {"event": "error", "message": str(exc)})
            raise


def _settings_hash(cfg: FlashGRPOConfig) -> str:
    """12 hex digits of the run's settings (the run name left out): the name of an unnamed run in
    ComfyUI, so that queueing the same settings again finds the run."""
    return hashlib.sha256(json.dumps({**cfg.to_dict(), "run_name": ""}, sort_keys=True).encode()).hexdigest()[:12]


def finished_run(cfg: FlashGRPOConfig) -> RunResult | None:
    """The finished run of ``cfg`` in ``cfg.output_dir/cfg.run_name``, or None: its ``config.json``
    equals ``cfg``, its ``summary.json`` says every iteration ran uncancelled, its LoRA is there."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    lora = Path(summary.get("lora") or run_dir / "missing")
    if (saved != json.loads(cfg.to_json()) or summary.get("cancelled") is not False
            or summary.get("iterations_done") != cfg.iterations or not lora.is_file()):
        return None
    return RunResult(run_dir, lora, cfg.iterations, False, summary)


def _read_lora(path) -> dict | None:
    """A LoRA file's tensors (ComfyUI's LORA_MODEL: what Load LoRA Model applies)."""
    from safetensors.torch import load_file

    return load_file(str(path)) if path else None


def _png_as_image(path: Path):
    """A PNG as ComfyUI's IMAGE ``[1, H, W, 3]`` float in 0..1 (black 64x64 when the file is missing)."""
    import numpy as np
    import torch
    from PIL import Image

    if not path.is_file():
        return torch.zeros(1, 64, 64, 3)
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


# --------------------------------------------------------------------------------------------
# Aligned-LoRA loader (ComfyUI's MODEL)
# --------------------------------------------------------------------------------------------


def _arch_of_weights(shapes: dict[str, tuple]) -> dict:
    """Architecture numbers of a ComfyUI Wan diffusion model from its weight shapes."""
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    arch = {"num_layers": len(blocks)}
    if "blocks.0.self_attn.q.weight" in shapes:
        arch["dim"] = shapes["blocks.0.self_attn.q.weight"][0]
    if "patch_embedding.weight" in shapes:
        arch["in_channels"] = shapes["patch_embedding.weight"][1]
    if "text_embedding.0.weight" in shapes:
        arch["text_dim"] = shapes["text_embedding.0.weight"][1]
    return arch


def check_lora_fits(lora_sd: dict, metadata: dict, shapes: dict[str, tuple]) -> None:
    """Refuse (``UserError``) a ComfyUI-keyed Wan LoRA that was made for another model.

    ``shapes``: the MODEL's diffusion-model weight shapes, keys like ``blocks.0.self_attn.q.weight``.
    Compares the LoRA's ``base_model_arch`` metadata (layers, width, input channels, text width)
    with the model, then every LoRA module's A/B shapes with the weight it patches.
    """
    if "head.modulation" not in shapes and "blocks.0.self_attn.q.weight" not in shapes:
        raise UserError("the MODEL is not a Wan2.1 model (no blocks.0.self_attn.q.weight): this LoRA is for Wan2.1 T2V.")
    model = _arch_of_weights(shapes)
    arch = metadata.get("base_model_arch")
    if isinstance(arch, str):
        try:
            arch = json.loads(arch)
        except json.JSONDecodeError:
            arch = None
    if isinstance(arch, dict):
        lora = {"num_layers": arch.get("num_layers"), "in_channels": arch.get("in_channels"),
                "text_dim": arch.get("text_dim")}
        if arch.get("num_attention_heads") and arch.get("attention_head_dim"):
            lora["dim"] = arch["num_attention_heads"] * arch["attention_head_dim"]
        diff = [f"{k} {lora[k]} vs {model[k]}" for k in lora if lora[k] is not None and k in model and lora[k] != model[k]]
        if diff:
            raise UserError(
                f"this LoRA was trained on another model ({metadata.get('base_model', 'unknown base')}): "
                f"{'; '.join(diff)} (LoRA vs loaded MODEL). Load the Wan model it was trained on."
            )
    for key, t in sorted(lora_sd.items()):
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        module = key[len("diffusion_model."):] if key.startswith("diffusion_model.") else key
        module = module.rsplit(".", 2)[0]
        weight = shapes.get(f"{module}.weight")
        if weight is None:
            raise UserError(f"this LoRA patches {module}, which the loaded MODEL does not have: it was trained on another model.")
        a = key.endswith(".lora_A.weight")
        want, got = (weight[1], t.shape[1]) if a else (weight[0], t.shape[0])
        if want != got:
            raise UserError(
                f"this LoRA's {module} {'input' if a else 'output'} width is {got} but the loaded MODEL's is "
                f"{want}: it was trained on another Wan model (e.g. 1.3B vs 14B). Load the model it was made for."
            )


def lora_info(metadata: dict) -> str:
    """A few lines about how an aligned LoRA was trained (from its metadata)."""
    cfg = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
    lines = [
        f"trainer: {metadata.get('trainer', 'unknown')}  strategy: {metadata.get('strategy', '?')}",
        f"base model: {metadata.get('base_model', '?')} (hash {metadata.get('base_model_hash', '?')})",
        f"iterations: {metadata.get('iterations', '?')}  weights: {metadata.get('weights', '?')}",
        f"rank {metadata.get('lora_rank', '?')}  alpha {metadata.get('lora_alpha', '?')}",
    ]
    rewards = metadata.get("rewards")
    if isinstance(rewards, list):
        lines.append("rewards: " + ", ".join(f"{r.get('name')} x{r.get('weight', 1)}" for r in rewards if isinstance(r, dict)))
    if cfg:
        lines.append(f"trained at {cfg.get('width')}x{cfg.get('height')}, {cfg.get('num_frames')} frames, "
                     f"{cfg.get('sampling_steps')} steps, shift {cfg.get('shift')}, CFG {cfg.get('guidance_scale')}")
    return "\n".join(lines)


class FlashGRPOLoraLoader:
    """Applies an aligned LoRA to ComfyUI's Wan MODEL, after checking it was made for that model."""

    DESCRIPTION = ("Loads a Flash-GRPO LoRA (or any Wan LoRA in ComfyUI's key format) onto the Wan MODEL from "
                   "Load Diffusion Model, refusing a LoRA trained on another model, and shows how it was trained.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The Wan2.1 model (Load Diffusion Model / UNETLoader output)."}),
            "lora_name": (list(host.current().model_files("loras")), {"tooltip":
                "The LoRA from models/loras; Flash-GRPO runs publish theirs as flash_grpo/<run>.safetensors."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                "LoRA strength (1 = as trained; 0 = off)."}),
        }}

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.", "How the LoRA was trained (from its metadata).")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, lora_name="", **_):
        """Size and time of the LoRA file: a LoRA republished under the same name is loaded again."""
        try:
            return _file_fingerprint(host.current().model_path("loras", lora_name))
        except (UserError, OSError):
            return ""  # load() reports it

    def load(self, model, lora_name, strength):
        from ..engine.lora import read_aligned_lora

        h = host.current()
        path = h.model_path("loras", lora_name)
        sd, meta = read_aligned_lora(path)
        check_lora_fits(sd, meta, h.model_weight_shapes(model))
        info = lora_info(meta)
        patched = h.apply_lora(model, path, float(strength)) if strength != 0 else model
        return {"ui": {"text": [info]}, "result": (patched, info)}


NODE_CLASS_MAPPINGS = {
    "FlashGRPOModelSource": FlashGRPOModelSource,
    "FlashGRPOComfyModel": FlashGRPOComfyModel,
    "FlashGRPOPrompts": FlashGRPOPrompts,
    "FlashGRPOReward": FlashGRPOReward,
    "FlashGRPOGroupSampler": FlashGRPOGroupSampler,
    "FlashGRPORewardScorer": FlashGRPORewardScorer,
    "FlashGRPOTrainer": FlashGRPOTrainer,
    "FlashGRPOLoraLoader": FlashGRPOLoraLoader,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FlashGRPOModelSource": "Flash-GRPO Model Source",
    "FlashGRPOComfyModel": "Flash-GRPO Model from ComfyUI Files",
    "FlashGRPOPrompts": "Flash-GRPO Prompts",
    "FlashGRPOReward": "Flash-GRPO Reward",
    "FlashGRPOGroupSampler": "Flash-GRPO Iso-temporal Group Sampler",
    "FlashGRPORewardScorer": "Flash-GRPO Reward Scorer",
    "FlashGRPOTrainer": "Flash-GRPO Trainer",
    "FlashGRPOLoraLoader": "Flash-GRPO Aligned LoRA Loader",
}
