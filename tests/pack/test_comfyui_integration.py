"""The pack inside a real ComfyUI (CPU): import, /object_info, the templates of example_workflows/,
the demo workflow from /prompt (its preview images in /history), the published LoRA in
LoraLoaderModelOnly's list, a re-queue that does not train again with the Trainer's lora_name linked
into LoraLoaderModelOnly, the Group Sampler and a model-reward Reward Scorer (the only output node)
running in the backend, and an aligned LoRA applied to a ComfyUI-format Wan model with every key
loaded (weights checked after ComfyUI's ModelSave). Stock Load Diffusion Model / Load CLIP / Load
VAE feeding the Group Sampler and the Trainer with ComfyUI loading none of them (its log names every
model it loads), the Trainer's MODEL and LORA_MODEL outputs, and the train-then-generate template
from /prompt: the progress bar's preview frame over the websocket, held-out previews while it
trains, the animated before/after in /history, generated videos that follow the LoRA strength, and
no second training when queued again.

Needs a ComfyUI checkout: ``COMFYUI_DIR=/path/to/ComfyUI`` and, if ComfyUI has its own venv,
``COMFYUI_PYTHON=/path/to/venv/bin/python`` (default: this interpreter). The server runs with
``--base-directory`` in a temp folder (models, output, custom_nodes with a symlink to this repo),
bound to 127.0.0.1 on a free port, and is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.pack.test_pack import ROOT, save_comfy_wan, save_tiny_lora, tiny_comfy_umt5, tiny_comfy_wan

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set (path of a ComfyUI checkout)")

NODES = {"FlashGRPOModelSource", "FlashGRPOComfyModel", "FlashGRPOPrompts", "FlashGRPOReward",
         "FlashGRPOGroupSampler", "FlashGRPORewardScorer", "FlashGRPOTrainer", "FlashGRPOLoraLoader"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--disable-api-nodes", "--disable-auto-launch",
             "--database-url", "sqlite:///:memory:"],
            cwd=COMFYUI_DIR, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return json.loads(body) if body.strip() else {}
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path}: {e.code} {e.read()[:2000]!r}") from None

    def wait_ready(self, timeout: float = 240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                return self.get("/object_info")
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise AssertionError(f"ComfyUI did not answer in {timeout}s:\n{self.log()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 900) -> dict:
        pid = self.post("/prompt", {"prompt": prompt, "client_id": "flash-grpo-test"})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") in ("success", "error"):
                    return hist[pid]
            time.sleep(1)
        raise AssertionError(f"prompt {pid} did not finish in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "flash_grpo").symlink_to(ROOT, target_is_directory=True)
    wan = tiny_comfy_wan()
    save_comfy_wan(base / "models" / "diffusion_models" / "tiny_wan_t2v.safetensors", wan)
    (base / "models" / "loras").mkdir(parents=True)
    save_tiny_lora(base / "models" / "loras" / "tiny_wan_lora.safetensors", wan, rank=4, alpha=8.0)
    server = Comfy(base)
    try:
        server.object_info = server.wait_ready()
        yield server
    finally:
        server.stop()


def test_pack_imports_and_every_node_is_listed(comfy):
    info = comfy.object_info
    assert NODES <= set(info), sorted(NODES - set(info))
    assert {info[n]["category"] for n in NODES} == {"Flash-GRPO"}
    log = comfy.log()
    assert "IMPORT FAILED" not in "\n".join(ln for ln in log.splitlines() if "flash_grpo" in ln), log[-3000:]
    assert "Cannot import" not in "\n".join(ln for ln in log.splitlines() if "flash_grpo" in ln)
    assert "/extensions/flash_grpo/flash_grpo.js" in comfy.get("/extensions")
    # ComfyUI 0.3.64 lists custom-node templates at GET /api/workflow_templates (app/custom_node_manager.py)
    # and serves each pack's example_workflows/ under /api/workflow_templates/<pack folder>/.
    listed = set(comfy.get("/api/workflow_templates")["flash_grpo"])
    assert listed >= {"demo", "align", "generate_with_lora", "train_then_generate"}
    for name in ("align", "generate_with_lora", "train_then_generate"):  # served from example_workflows/, thumbnail too
        assert comfy.get(f"/api/workflow_templates/flash_grpo/{name}.json")["nodes"]
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/flash_grpo/{name}.jpg", timeout=60) as r:
            assert r.read(3) == b"\xff\xd8\xff"
    seed = info["FlashGRPOTrainer"]["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] == "fixed"
    assert info["FlashGRPORewardScorer"]["output_node"] is True
    for n in NODES:
        for section in ("required", "optional"):
            for name, spec in info[n]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{n}.{name}"


def _backend_health() -> dict:
    """/health of the backend ComfyUI started (the tests' state dir: the server inherits it)."""
    from trainer.service import client

    info = client._read_state(client.state_dir())
    if not info:
        return {"jobs_run": {"train": 0, "sample": 0, "score": 0}}
    return client.BackendClient(info["url"], info["token"]).health()


@pytest.fixture(scope="module")
def demo(comfy):
    """The demo workflow, 2 iterations, queued once from /prompt: (prompt, trainer id, run, history)."""
    sys.path.insert(0, str(ROOT))
    from trainer.graph.node_types import NODE_CLASS_MAPPINGS
    from trainer.graph.workflow import load_workflow

    prompt = load_workflow(ROOT / "workflows" / "demo.json", NODE_CLASS_MAPPINGS)
    run = f"itest-{os.getpid()}-{int(time.time())}"
    trainer_id = next(k for k, n in prompt.items() if n["class_type"] == "FlashGRPOTrainer")
    prompt[trainer_id]["inputs"].update({"iterations": 2, "run_name": run,
                                         "config_overrides": json.dumps({"sampling_steps": 6})})
    return prompt, trainer_id, run, comfy.run(prompt)


def test_demo_workflow_runs_from_prompt_and_publishes_the_lora(comfy, demo):
    prompt, trainer_id, run, result = demo
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    text = result["outputs"][trainer_id]["text"][0]
    assert text.startswith("2/2 iterations") and f"flash_grpo/{run}.safetensors" in text
    # the held-out videos before/after (animated WebP), the before/after sheet and the reward curve
    images = result["outputs"][trainer_id]["images"]
    assert len(images) == 3 and result["outputs"][trainer_id]["animated"] == [True]
    for image, magic in zip(images, (b"RIFF", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n")):
        with urllib.request.urlopen(f"{comfy.url}/view?filename={image['filename']}&type={image['type']}"
                                    f"&subfolder={urllib.request.quote(image['subfolder'])}", timeout=60) as r:
            assert r.read(len(magic)) == magic

    loras = comfy.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert f"flash_grpo/{run}.safetensors" in loras
    ours = comfy.get("/object_info/FlashGRPOLoraLoader")["FlashGRPOLoraLoader"]["input"]["required"]["lora_name"][0]
    assert f"flash_grpo/{run}.safetensors" in ours
    events = comfy.get(f"/flash_grpo/runs/{run}/events")
    assert [e["iteration"] for e in events["events"] if e["event"] == "iteration"] == [0, 1]
    assert events["status"] == "done"
    assert (comfy.base / "output" / "flash_grpo" / "runs" / run / "checkpoints" / "latest.pt").is_file()

    # That LoRA (built-in tiny model) does not fit the ComfyUI Wan model: refused with the reason.
    bad = comfy.run({
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan_t2v.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "FlashGRPOLoraLoader", "inputs": {"model": ["1", 0], "lora_name": f"flash_grpo/{run}.safetensors", "strength": 1.0}},
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "diffusion_models/refused"}},
    })
    assert bad["status"]["status_str"] == "error"
    assert "trained on another model" in json.dumps(bad["status"]["messages"])


def test_aligned_lora_applies_to_a_comfyui_wan_model_with_every_key_loaded(comfy):
    from safetensors.torch import load_file

    from trainer.engine.lora import read_aligned_lora

    result = comfy.run({
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan_t2v.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "FlashGRPOLoraLoader", "inputs": {"model": ["1", 0], "lora_name": "tiny_wan_lora.safetensors", "strength": 1.0}},
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "diffusion_models/with_lora"}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "tiny_wan_lora.safetensors", "strength_model": 0.5}},
        "5": {"class_type": "ModelSave", "inputs": {"model": ["4", 0], "filename_prefix": "diffusion_models/stock_lora"}},
    })
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    assert "strategy: flash" in result["outputs"]["2"]["text"][0]
    log = comfy.log()
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]

    base = load_file(str(comfy.base / "models" / "diffusion_models" / "tiny_wan_t2v.safetensors"))
    lora_sd, meta = read_aligned_lora(comfy.base / "models" / "loras" / "tiny_wan_lora.safetensors")
    scale = float(meta["lora_alpha"]) / int(meta["lora_rank"])
    modules = sorted(k[len("diffusion_model."):-len(".lora_A.weight")] for k in lora_sd if k.endswith(".lora_A.weight"))
    assert len(modules) == 2 * 8
    for prefix, strength in (("with_lora", 1.0), ("stock_lora", 0.5)):
        (saved_path,) = sorted((comfy.base / "output" / "diffusion_models").glob(f"{prefix}_*.safetensors"))
        saved = load_file(str(saved_path))
        for m in modules:
            key = next(k for k in saved if k.endswith(f"diffusion_model.{m}.weight"))
            a, b = lora_sd[f"diffusion_model.{m}.lora_A.weight"], lora_sd[f"diffusion_model.{m}.lora_B.weight"]
            want = base[f"model.diffusion_model.{m}.weight"].float() + strength * scale * (b.float() @ a.float())
            assert torch.allclose(saved[key].float(), want, atol=2e-3, rtol=1e-2), (prefix, m)


def test_cancel_stops_the_run_and_keeps_its_checkpoint(comfy):
    from trainer.graph.node_types import NODE_CLASS_MAPPINGS
    from trainer.graph.workflow import load_workflow

    prompt = load_workflow(ROOT / "workflows" / "demo.json", NODE_CLASS_MAPPINGS)
    run = f"icancel-{os.getpid()}-{int(time.time())}"
    trainer_id = next(k for k, n in prompt.items() if n["class_type"] == "FlashGRPOTrainer")
    prompt[trainer_id]["inputs"].update({"iterations": 200, "run_name": run,
                                         "config_overrides": json.dumps({"sampling_steps": 6, "checkpoint_every": 1000})})
    pid = comfy.post("/prompt", {"prompt": prompt, "client_id": "flash-grpo-test"})["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:  # wait for the first iteration (the live route)
        try:
            if any(e["event"] == "iteration" for e in comfy.get(f"/flash_grpo/runs/{run}/events")["events"]):
                break
        except urllib.error.HTTPError:
            pass
        time.sleep(1)
    comfy.post("/interrupt", {})
    deadline = time.time() + 300
    while time.time() < deadline:
        hist = comfy.get(f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(1)
    status = hist[pid]["status"]
    assert status["status_str"] == "error" and any(m[0] == "execution_interrupted" for m in status["messages"]), status
    run_dir = comfy.base / "output" / "flash_grpo" / "runs" / run
    assert (run_dir / "checkpoints" / "latest.pt").is_file(), "cancel keeps the checkpoint"
    events = comfy.get(f"/flash_grpo/runs/{run}/events")
    assert events["status"] == "cancelled" and events["events"][-1]["event"] == "cancelled"
    done = events["events"][-1]["iteration"]
    assert 1 <= done < 200


def test_requeued_demo_does_not_train_again_and_its_lora_name_feeds_a_stock_lora_loader(comfy, demo):
    prompt, trainer_id, run, first = demo
    assert first["status"]["status_str"] == "success"
    events = comfy.base / "output" / "flash_grpo" / "runs" / run / "events.jsonl"
    starts = events.read_text().count('"event": "start"')
    trained = _backend_health()["jobs_run"]["train"]
    linked = {**prompt,
              "90": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan_t2v.safetensors", "weight_dtype": "default"}},
              "91": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["90", 0], "lora_name": [trainer_id, 0],
                                                                     "strength_model": 1.0}},
              "92": {"class_type": "ModelSave", "inputs": {"model": ["91", 0], "filename_prefix": "diffusion_models/linked"}}}
    result = comfy.run(linked)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    assert events.read_text().count('"event": "start"') == starts, "the finished run was not trained again"
    assert _backend_health()["jobs_run"]["train"] == trained
    assert sorted((comfy.base / "output" / "diffusion_models").glob("linked_*.safetensors"))


def test_sampler_and_a_model_reward_run_in_the_backend_and_the_scorer_alone_is_an_output(comfy, tmp_path):
    from tests.rewards.test_reward_models import tiny_clip, write_clip_tokenizer, write_processor_config

    clip_dir = tmp_path / "clip"
    vocab = write_clip_tokenizer(clip_dir)
    write_processor_config(clip_dir)
    tiny_clip(vocab).save_pretrained(clip_dir)
    before = _backend_health()["jobs_run"]
    result = comfy.run({
        "1": {"class_type": "FlashGRPOModelSource", "inputs": {"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1}},
        "2": {"class_type": "FlashGRPOPrompts", "inputs": {"prompts": "a red ball\na blue cube", "prompt_file": "none",
                                                           "eval_prompts": 0}},
        "3": {"class_type": "FlashGRPOGroupSampler", "inputs": {
            "model": ["1", 0], "prompts": ["2", 0], "num_prompts": 2, "group_size": 2, "preset": "tiny_demo",
            "iteration": 0, "seed": 0, "config_overrides": json.dumps({"sampling_steps": 4})}},
        "4": {"class_type": "FlashGRPOReward", "inputs": {"reward": "clip_score", "weight": 1.0,
                                                          "args": json.dumps({"path": str(clip_dir)})}},
        "5": {"class_type": "FlashGRPORewardScorer", "inputs": {
            "reward": ["4", 0], "group_size": 2, "std_mode": "group", "clip": 5.0, "videos": ["3", 0],
            "prompts": ["3", 1]}},
    })
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    report = result["outputs"]["5"]["flash_grpo_scores"][0]
    assert len(report["scores"]) == 4 and "clip_score" in report["details"]
    after = _backend_health()["jobs_run"]
    assert after["sample"] == before["sample"] + 1 and after["score"] == before["score"] + 1


# ------------------------------------------------ stock loaders, train then generate --

LOAD_MARKS = ("model weight dtype", "CLIP/text encoder model load device", "VAE load device")
"""What ComfyUI logs when it builds a diffusion model, a text encoder or a VAE (comfy/model_base.py,
comfy/sd.py): counted before and after a prompt, they tell whether ComfyUI loaded one."""

WAN_VAE = """
import sys, torch
from safetensors.torch import save_file
from comfy.cli_args import args
args.cpu = True  # as the test's server runs (the module picks its device at import)
import comfy.ldm.wan.vae
torch.manual_seed(0)
vae = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                               temperal_downsample=[False, True, True], dropout=0.0)
for m in vae.modules():  # ComfyUI's ops skip weight init (they expect a checkpoint): torch's own init
    for cls in (torch.nn.Conv3d, torch.nn.Conv2d, torch.nn.Linear):
        if isinstance(m, cls):
            cls.reset_parameters(m)
assert all(torch.isfinite(v).all() for v in vae.state_dict().values())
save_file({k: v.to(torch.bfloat16).contiguous() for k, v in vae.state_dict().items()}, sys.argv[1])
"""
"""A Wan2.1 VAE file as ComfyUI loads wan_2.1_vae.safetensors, built by ComfyUI's own class (random weights)."""


def _loads(comfy) -> dict[str, int]:
    log = comfy.log()
    return {m: log.count(m) for m in LOAD_MARKS}


@pytest.fixture(scope="module")
def stock_files(comfy):
    """ComfyUI-format files for the stock loaders: the tiny Wan (already there), a tiny umt5 with its
    tokenizer inside, a Wan2.1 VAE written by ComfyUI's WanVAE (names as the loaders list them)."""
    models = comfy.base / "models"
    tiny_comfy_umt5(models / "text_encoders" / "tiny_umt5.safetensors")
    vae = models / "vae" / "wan_2.1_vae_random.safetensors"
    vae.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", WAN_VAE, str(vae)], cwd=COMFYUI_DIR,
                   check=True, capture_output=True, timeout=600)
    return {"unet": "tiny_wan_t2v.safetensors", "clip": "tiny_umt5.safetensors", "vae": vae.name}


def _stock_loaders(files: dict) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": files["unet"], "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": files["clip"], "type": "wan", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "4": {"class_type": "FlashGRPOPrompts", "inputs": {"prompts": "a red ball\na blue cube", "prompt_file": "none",
                                                           "eval_prompts": 0}},
    }


TINY_STOCK = json.dumps({"sampling_steps": 4, "max_sequence_length": 16, "height": 32, "width": 32, "num_frames": 5})


def test_stock_loaders_feed_the_group_sampler_and_comfyui_loads_none_of_them(comfy, stock_files):
    before, loads = _backend_health()["jobs_run"], _loads(comfy)
    result = comfy.run({
        **_stock_loaders(stock_files),
        "5": {"class_type": "FlashGRPOGroupSampler", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "prompts": ["4", 0], "num_prompts": 1,
            "group_size": 2, "preset": "tiny_demo", "iteration": 0, "seed": 0, "config_overrides": TINY_STOCK}},
        "6": {"class_type": "FlashGRPOReward", "inputs": {"reward": "brightness", "weight": 1.0, "args": "{}"}},
        "7": {"class_type": "FlashGRPORewardScorer", "inputs": {
            "reward": ["6", 0], "group_size": 2, "std_mode": "group", "clip": 5.0, "videos": ["5", 0], "prompts": ["5", 1]}},
    })
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    scores = result["outputs"]["7"]["flash_grpo_scores"][0]["scores"]
    assert len(scores) == 2 and scores[0] != scores[1] and all(0 < x < 1 for x in scores)  # real, differing videos
    after = _backend_health()["jobs_run"]
    assert after["sample"] == before["sample"] + 1 and after["score"] == before["score"] + 1
    assert _loads(comfy) == loads, "ComfyUI loaded a model the backend was to load"
    (path,) = (comfy.base / "output" / "flash_grpo" / "models").glob("tiny_wan_t2v-*.flashgrpo.json")
    manifest = json.loads(path.read_text())
    assert manifest["vae"] == str(comfy.base / "models" / "vae" / stock_files["vae"])


def test_stock_loaders_train_and_the_trainer_outputs_the_model_with_its_lora(comfy, stock_files):
    """The Trainer on Load Diffusion Model / Load CLIP / Load VAE: the backend trains on those files;
    its MODEL output (only then ComfyUI loads the diffusion model, at most once) and its LORA_MODEL output
    through Load LoRA Model both hold base + LoRA, checked after ModelSave. A MODEL from a LoRA node
    is refused with the fix, and nothing is loaded for it."""
    from safetensors.torch import load_file

    from trainer.engine.lora import read_aligned_lora

    run = f"istock-{os.getpid()}-{int(time.time())}"
    loads, log_start = _loads(comfy), len(comfy.log())
    graph = {
        **_stock_loaders(stock_files),
        "5": {"class_type": "FlashGRPOReward", "inputs": {"reward": "brightness", "weight": 1.0, "args": "{}"}},
        "6": {"class_type": "FlashGRPOTrainer", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "prompts": ["4", 0], "reward": ["5", 0],
            "preset": "tiny_demo", "strategy": "flash", "iterations": 1, "prompts_per_iteration": 1, "group_size": 2,
            "learning_rate": 0.05, "lora_rank": 2, "seed": 0, "run_name": run, "resume": False,
            "config_overrides": TINY_STOCK}},
        "7": {"class_type": "ModelSave", "inputs": {"model": ["6", 5], "filename_prefix": "diffusion_models/trained"}},
        "8": {"class_type": "LoraModelLoader", "inputs": {"model": ["1", 0], "lora": ["6", 6], "strength_model": 1.0}},
        "9": {"class_type": "ModelSave", "inputs": {"model": ["8", 0], "filename_prefix": "diffusion_models/lora_model"}},
    }
    result = comfy.run(graph)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
    now = _loads(comfy)
    # the diffusion model at most once, for the MODEL output (none when an earlier prompt's UNETLoader is cached)
    assert now["model weight dtype"] - loads["model weight dtype"] <= 1
    assert now["CLIP/text encoder model load device"] == loads["CLIP/text encoder model load device"]
    assert now["VAE load device"] == loads["VAE load device"]
    assert "lora key not loaded" not in comfy.log()[log_start:]  # every key of the trained LoRA applied

    base = load_file(str(comfy.base / "models" / "diffusion_models" / "tiny_wan_t2v.safetensors"))
    lora_sd, meta = read_aligned_lora(comfy.base / "models" / "loras" / "flash_grpo" / f"{run}.safetensors")
    assert meta["base_model"].startswith("tiny_wan_t2v-")
    scale = float(meta["lora_alpha"]) / int(meta["lora_rank"])
    modules = sorted(k[len("diffusion_model."):-len(".lora_A.weight")] for k in lora_sd if k.endswith(".lora_A.weight"))
    assert modules
    changed = 0
    for prefix in ("trained", "lora_model"):
        (saved_path,) = sorted((comfy.base / "output" / "diffusion_models").glob(f"{prefix}_*.safetensors"))
        saved = load_file(str(saved_path))
        for m in modules:
            key = next(k for k in saved if k.endswith(f"diffusion_model.{m}.weight"))
            a, b = lora_sd[f"diffusion_model.{m}.lora_A.weight"], lora_sd[f"diffusion_model.{m}.lora_B.weight"]
            delta = scale * (b.float() @ a.float())
            want = base[f"model.diffusion_model.{m}.weight"].float() + delta
            assert torch.allclose(saved[key].float(), want, atol=1e-5, rtol=1e-4), (prefix, m)
            changed += int(delta.abs().max() > 0)
    assert changed, "training moved the LoRA away from zero"

    patched = {**graph, "10": {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": "tiny_wan_lora.safetensors", "strength_model": 1.0}}}
    patched["6"] = {**graph["6"], "inputs": {**graph["6"]["inputs"], "model": ["10", 0], "run_name": run + "-x"}}
    for n in ("7", "8", "9"):
        del patched[n]
    loads = _loads(comfy)
    refused = comfy.run(patched)
    assert refused["status"]["status_str"] == "error"
    assert "straight from" in json.dumps(refused["status"]["messages"]) and "UNETLoader" in json.dumps(refused["status"]["messages"])
    assert _loads(comfy) == loads


class _Websocket:
    """ComfyUI's websocket as the front end opens it (client id of ``Comfy.run``): every JSON
    message and binary frame it receives, on a thread, until ``close``."""

    def __init__(self, url: str):
        self.messages, self.frames = [], []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(url)), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the websocket did not connect"

    async def _run(self, url):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url.replace("http", "ws", 1) + "/ws?clientId=flash-grpo-test") as ws:
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self.frames.append((len(self.messages), bytes(msg.data)))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break

    def close(self):
        self._stop.set()
        self._thread.join(10)


def _object_info_classes(info: dict) -> dict:
    """Node classes with the INPUT_TYPES / RETURN_TYPES the real ComfyUI reports, for converting a
    UI-format template that uses stock nodes into the API prompt /prompt takes."""
    classes = {}
    for name, d in info.items():
        spec = {sec: {k: tuple(v) for k, v in d["input"].get(sec, {}).items()} for sec in ("required", "optional")}
        classes[name] = type(name, (), {"INPUT_TYPES": classmethod(lambda cls, spec=spec: spec),
                                        "RETURN_TYPES": tuple(d["output"]), "OUTPUT_NODE": d["output_node"],
                                        "FUNCTION": "run", "run": lambda self, **kw: None})
    return classes


def _webp_frames(comfy, image: dict, frame_ms: int | None = None) -> list:
    """The frames of an animated WebP. libwebp stores a frame identical to the one before it as a
    longer duration of that one; with ``frame_ms`` (the writer's frame duration) such a frame is
    counted as often as it is shown."""
    import numpy as np
    from PIL import Image

    path = comfy.base / image["type"] / image["subfolder"] / image["filename"]
    with Image.open(path) as im:
        assert im.format == "WEBP"
        frames = []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            frame = np.asarray(im.convert("RGB")).copy()  # loads the frame, and with it its duration
            shown = max(1, round(im.info.get("duration", 0) / frame_ms)) if frame_ms else 1
            frames += [frame] * shown
    return frames


def test_train_then_generate_template_runs_from_prompt_and_generates_with_the_lora(comfy):
    import numpy as np

    from trainer.graph.workflow import load_workflow

    prompt = load_workflow(ROOT / "example_workflows" / "train_then_generate.json", _object_info_classes(comfy.object_info))
    ids = {n["class_type"]: k for k, n in prompt.items()}
    trainer_id, sampler_id, save_id = ids["FlashGRPOTrainer"], ids["FlashGRPOGroupSampler"], ids["SaveAnimatedWEBP"]
    assert prompt[sampler_id]["inputs"]["lora_name"] == [trainer_id, 0]
    run = f"itemplate-{os.getpid()}-{int(time.time())}"
    overrides = {**json.loads(prompt[trainer_id]["inputs"]["config_overrides"]), "sampling_steps": 6}
    prompt[trainer_id]["inputs"].update({"iterations": 2, "run_name": run, "preview_every": 1,
                                         "config_overrides": json.dumps(overrides)})
    prompt[sampler_id]["inputs"]["config_overrides"] = json.dumps({"sampling_steps": 6})
    trained, loads = _backend_health()["jobs_run"]["train"], _loads(comfy)

    ws = _Websocket(comfy.url)
    try:
        first = comfy.run(prompt)
    finally:
        ws.close()
    assert first["status"]["status_str"] == "success", json.dumps(first["status"])[:3000] + comfy.log()[-3000:]
    assert _backend_health()["jobs_run"]["train"] == trained + 1
    assert _loads(comfy) == loads, "training and generating loaded nothing in ComfyUI's process"

    # /history: the Trainer's animated before/after (WebP in output/, where the run wrote it), sheet and curve.
    out = first["outputs"][trainer_id]
    assert out["animated"] == [True] and len(out["images"]) == 3
    webp = out["images"][0]
    assert webp["type"] == "output" and webp["filename"] == "before_after.webp"
    assert len(_webp_frames(comfy, webp)) == 9
    with urllib.request.urlopen(f"{comfy.url}/view?filename={webp['filename']}&type=output"
                                f"&subfolder={urllib.request.quote(webp['subfolder'])}", timeout=60) as r:
        head = r.read(12)
        assert head[:4] == b"RIFF" and head[8:] == b"WEBP"

    # While it trained: a held-out preview after iteration 1 (event, file, route) and the progress
    # bar's preview frame (a JPEG over the websocket while the Trainer ran).
    events = comfy.get(f"/flash_grpo/runs/{run}/events")["events"]
    (preview,) = [e for e in events if e["event"] == "preview"]
    assert preview["iterations_done"] == 1 and preview["file"] == "preview_00001.webp"
    with urllib.request.urlopen(f"{comfy.url}/flash_grpo/runs/{run}/samples/{preview['file']}", timeout=60) as r:
        assert r.read(12)[8:] == b"WEBP"
    live = [m["data"]["event"] for m in ws.messages if m.get("type") == "flash_grpo.progress"]
    assert "preview" in [e["event"] for e in live]
    progress = [i for i, m in enumerate(ws.messages) if m.get("type") == "progress" and m["data"]["node"] == trainer_id]
    jpegs = [(i, f) for i, f in ws.frames if struct.unpack(">II", f[:8]) == (1, 1) and f[8:11] == b"\xff\xd8\xff"]
    assert progress and jpegs and progress[0] <= jpegs[0][0] <= progress[-1] + 1, (progress, [i for i, _ in jpegs])
    executed = [m["data"] for m in ws.messages if m.get("type") == "executed" and m["data"]["node"] == trainer_id]
    assert executed and executed[0]["output"]["animated"] == [True]

    def generated(result) -> list:
        assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000] + comfy.log()[-3000:]
        images = result["outputs"][save_id]["images"]
        assert len(images) == 4  # 2 prompts x G = 2, one animated WebP each
        frame_ms = int(1000 / prompt[save_id]["inputs"]["fps"])  # SaveAnimatedWEBP's frame duration
        return [_webp_frames(comfy, i, frame_ms=frame_ms) for i in images]

    with_lora = generated(first)
    assert all(len(v) == 9 for v in with_lora)
    prompt[sampler_id]["inputs"]["lora_strength"] = 0.0
    off = generated(comfy.run(prompt))
    base_prompt = json.loads(json.dumps(prompt))
    base_prompt[sampler_id]["inputs"]["lora_name"] = "none"  # the base model, no LoRA at all
    base = generated(comfy.run(base_prompt))
    assert _backend_health()["jobs_run"]["train"] == trained + 1, "queued again, the finished run was not trained again"
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert all(same(a, b) for a, b in zip(off, base)), "strength 0 is the base model's video"
    assert not all(same(a, b) for a, b in zip(with_lora, off)), "the LoRA changes the generated video"
    assert _loads(comfy) == loads
