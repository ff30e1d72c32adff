"""The pack as the Comfy Registry and ComfyUI-Manager read it: pyproject metadata, licence,
requirements, and the templates in ``example_workflows/``.

The pyproject rules are the Registry's own, from its specification page
(https://docs.comfy.org/registry/specifications) and from what ``comfy node validate`` runs
(comfy-cli: ``extract_node_configuration`` reads ``[project]`` name, version, license, urls and
``[tool.comfy]`` PublisherId, DisplayName, Icon, includes; then ``ruff --select S102,S307``, no
``exec``/``eval``). Templates: ComfyUI lists every ``example_workflows/*.json`` of a pack, with the
``.jpg`` of the same name as its thumbnail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.pack.test_pack import ROOT

tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_project_name_and_version_follow_the_registry_rules():
    name = PROJECT["name"]
    # < 100 characters; letters, digits, - _ . only; no two special characters in a row; starts
    # with a letter; and (best practice) without "comfyui" in it.
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name) and not name.endswith(("-", "_", ".")), name
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), "semantic version X.Y.Z"
    assert PROJECT["description"].strip()


def test_license_is_a_file_and_the_file_is_the_declared_licence():
    assert PROJECT["license"] == {"file": "LICENSE"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "License :: OSI Approved :: Apache Software License" in PROJECT["classifiers"]


def test_urls_and_tool_comfy_metadata():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", PROJECT["urls"]["Repository"])
    assert COMFY["PublisherId"] and re.fullmatch(r"[a-z0-9-]+", COMFY["PublisherId"])
    assert COMFY["DisplayName"].strip()
    icon = COMFY["Icon"]
    assert re.fullmatch(r"https://\S+\.(svg|png|jpg|jpeg|webp)", icon), "the Icon must be a URL"
    # The URL serves the icon shipped in the repository (same path on the Repository's main branch).
    repo = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert icon.startswith(prefix) and (ROOT / icon.removeprefix(prefix)).is_file()
    for path in COMFY["includes"]:
        assert (ROOT / path).exists(), path


def test_dependencies_leave_torch_to_comfyui_and_match_requirements():
    reqs = _requirements()
    assert "torch" not in {_name(r) for r in reqs}, "a `pip install -r` must not replace ComfyUI's torch"
    assert PROJECT["dependencies"] == reqs
    # `make setup` installs torch itself before requirements.txt (CPU build without an NVIDIA GPU).
    make = (ROOT / "Makefile").read_text()
    assert "TORCH_CPU ?= torch==" in make and '"$(TORCH_CPU)"' in make and '"$(TORCH_CUDA)"' in make
    assert make.index('"$(TORCH_CPU)"') < make.index("-r requirements.txt")


def test_no_exec_or_eval_in_the_pack():
    """``comfy node validate``'s security check (warnings today, errors announced)."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT), "-q", "--select", "S102,S307",
                          "--exit-zero", "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "", out.stdout


# ------------------------------------------------------------------------------- templates --

TEMPLATES = ROOT / "example_workflows"


def _ui_nodes(name: str) -> dict[str, dict]:
    data = json.loads((TEMPLATES / f"{name}.json").read_text())
    return {n["type"]: n for n in data["nodes"]}


def test_every_template_has_a_thumbnail_and_converts_with_the_nodes_it_uses():
    from PIL import Image

    from tests.pack.test_pack import import_pack
    from trainer.graph.workflow import FRONTEND_ONLY_TYPES, load_workflow

    pack = import_pack()
    templates = sorted(TEMPLATES.glob("*.json"))
    assert {p.stem for p in templates} >= {"align", "generate_with_lora"}
    for path in templates:
        with Image.open(path.with_suffix(".jpg")) as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 128, path
        ours = {t for t in _ui_nodes(path.stem) if t.startswith("FlashGRPO")}
        assert ours <= set(pack.NODE_CLASS_MAPPINGS), path
        if all(t in pack.NODE_CLASS_MAPPINGS or t in FRONTEND_ONLY_TYPES for t in _ui_nodes(path.stem)):
            load_workflow(path, pack.NODE_CLASS_MAPPINGS)  # widgets_values match INPUT_TYPES


def test_generate_template_loads_the_lora_align_publishes_and_samples_as_it_was_trained():
    from tests.pack.test_pack import import_pack
    from trainer.engine.config import FlashGRPOConfig
    from trainer.graph.workflow import load_workflow

    pack = import_pack()
    prompt = load_workflow(TEMPLATES / "align.json", pack.NODE_CLASS_MAPPINGS)
    trainer = next(n["inputs"] for n in prompt.values() if n["class_type"] == "FlashGRPOTrainer")
    cfg = FlashGRPOConfig.from_dict(json.loads(trainer["config_overrides"]), preset=trainer["preset"])
    gen = _ui_nodes("generate_with_lora")
    # The Trainer publishes flash_grpo/<run_name>.safetensors (nodes.LORA_SUBFOLDER).
    assert gen["FlashGRPOLoraLoader"]["widgets_values"][0] == f"flash_grpo/{trainer['run_name']}.safetensors"
    width, height, frames, batch = gen["EmptyHunyuanLatentVideo"]["widgets_values"]
    assert (width, height, frames) == (cfg.width, cfg.height, cfg.num_frames)
    assert gen["ModelSamplingSD3"]["widgets_values"][0] == cfg.shift
    _seed, _control, steps, cfg_scale, sampler, scheduler, denoise = gen["KSampler"]["widgets_values"]
    assert cfg_scale == cfg.guidance_scale and steps == cfg.eval_sampling_steps
    assert (sampler, scheduler, denoise) == ("euler", "simple", 1)  # the Euler ODE of the evaluation


def test_the_headless_workflows_are_the_templates():
    """``workflows/`` holds what ``python -m trainer.run workflows/<name>.json`` runs; each is the
    same file as the template ComfyUI lists from ``example_workflows/``."""
    headless = sorted((ROOT / "workflows").glob("*.json"))
    assert {p.stem for p in headless} >= {"align", "demo"}
    for path in headless:
        assert (TEMPLATES / path.name).read_bytes() == path.read_bytes(), f"{path} differs from its template"


def test_train_then_generate_template_trains_as_the_demo_then_samples_with_its_lora():
    """The template's training part is the demo's (same model, prompts, reward and trainer values),
    its Group Sampler takes the Trainer's lora_name and the toy model, and its videos go to Save
    Animated WEBP, lossless (so strength 0 can be compared with the base model pixel for pixel)."""
    from tests.pack.test_pack import import_pack
    from trainer.graph.workflow import load_workflow

    pack = import_pack()

    class SaveAnimatedWEBP:  # ComfyUI's stock node, as its INPUT_TYPES declares it (0.3.64)
        RETURN_TYPES, OUTPUT_NODE, FUNCTION = (), True, "save_images"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                                 "fps": ("FLOAT", {"default": 6.0}), "lossless": ("BOOLEAN", {"default": True}),
                                 "quality": ("INT", {"default": 80}), "method": (["default", "fastest", "slowest"],)}}

    classes = {**pack.NODE_CLASS_MAPPINGS, "SaveAnimatedWEBP": SaveAnimatedWEBP}
    prompt = load_workflow(TEMPLATES / "train_then_generate.json", classes)
    demo = load_workflow(TEMPLATES / "demo.json", pack.NODE_CLASS_MAPPINGS)
    by_type = lambda p, t: [k for k, n in p.items() if n["class_type"] == t]  # noqa: E731
    (trainer,), (sampler,), (save,) = (by_type(prompt, t) for t in ("FlashGRPOTrainer", "FlashGRPOGroupSampler",
                                                                    "SaveAnimatedWEBP"))
    (demo_trainer,) = by_type(demo, "FlashGRPOTrainer")
    mine = {k: v for k, v in prompt[trainer]["inputs"].items() if k != "preview_every"}
    assert mine == demo[demo_trainer]["inputs"] and prompt[trainer]["inputs"]["preview_every"] > 0
    for name in ("model", "prompts", "reward"):
        src, ref = prompt[mine[name][0]], demo[demo[demo_trainer]["inputs"][name][0]]
        assert src == ref, name
    gen = prompt[sampler]["inputs"]
    assert gen["lora_name"] == [trainer, 0] and gen["lora_strength"] == 1.0 and gen["model"] == mine["model"]
    assert gen["preset"] == demo[demo_trainer]["inputs"]["preset"]
    assert prompt[save]["inputs"]["images"] == [sampler, 0] and prompt[save]["inputs"]["lossless"] is True
