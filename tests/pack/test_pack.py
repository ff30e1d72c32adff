"""The ComfyUI node pack without ComfyUI: import as ComfyUI does, node definitions, routes,
the aligned-LoRA loader's refusal, the group sampler / scorer outputs, ComfyUI model files.

Helpers here (``to_comfy_wan_keys``, ``import_pack``, ``tiny_comfy_wan``, ``save_tiny_lora``) are
reused by ``test_comfyui_integration.py``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "flash_grpo_pack"


# ----------------------------------------------------------------------------------- helpers --


def import_pack(name: str = PACK_NAME):
    """Import the repo as ComfyUI imports a custom node folder (a package from its __init__.py)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _diffusers_wan_rename() -> list[tuple[str, str]]:
    """diffusers' own original-Wan -> diffusers key renames (read from its converter's source)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    tree = ast.parse(inspect.getsource(convert_wan_transformer_to_diffusers).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRANSFORMER_KEYS_RENAME_DICT" for t in node.targets
        ):
            return list(ast.literal_eval(node.value).items())
    raise AssertionError("TRANSFORMER_KEYS_RENAME_DICT not found in diffusers' Wan converter")


_TOP_LEVEL = {"scale_shift_table": "head.modulation", "proj_out.weight": "head.head.weight",
              "proj_out.bias": "head.head.bias"}


def to_comfy_wan_keys(diffusers_sd: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict in ComfyUI's / original Wan key names
    (inverse of diffusers' single-file converter; checked by round-tripping through it)."""
    rename = _diffusers_wan_rename()
    out = {}
    for key, value in diffusers_sd.items():
        if key in _TOP_LEVEL:
            key = _TOP_LEVEL[key]
        else:
            for original, renamed in reversed(rename):
                key = key.replace(renamed, original)
        out[key] = value.contiguous()
    return out


# A Wan2.1 transformer ComfyUI itself can load (heads = dim / 128, freq_dim 256, text_dim 4096).
COMFY_TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16,
                      out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=256, num_layers=2,
                      rope_max_seq_len=32)


def tiny_comfy_wan(seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**{**COMFY_TINY_WAN, **overrides}).eval()


def save_comfy_wan(path: Path, transformer, prefix: str = "model.diffusion_model.") -> dict:
    from safetensors.torch import save_file

    sd = to_comfy_wan_keys(transformer.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in sd.items()}, str(path))
    return sd


def save_tiny_lora(path: Path, transformer, rank: int = 4, alpha: float = 8.0, seed: int = 1) -> None:
    """An aligned LoRA for ``transformer`` with non-zero B (so applying it changes weights)."""
    import copy

    from trainer.engine import lora

    transformer = copy.deepcopy(transformer)  # the caller's model stays LoRA-free
    lora.add_lora(transformer, rank=rank, alpha=alpha, init_seed=seed)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in lora.lora_parameters(transformer):
            if "lora_B" in name:
                p.normal_(0, 0.1)
    arch = json.dumps({k: transformer.config[k] for k in (
        "num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "text_dim")})
    lora.save_aligned_lora(path, transformer, rank, alpha, {
        "base_model": "tiny-comfy-wan", "base_model_arch": arch, "trainer": "flash-grpo",
        "strategy": "flash", "iterations": 3, "rewards": [{"name": "brightness", "weight": 1.0}]})


@pytest.fixture(scope="module")
def pack():
    return import_pack()


# ------------------------------------------------------------------------- node definitions --


def test_pack_imports_like_comfyui_and_mappings_are_complete(pack):
    mappings, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == set(names)
    assert {"FlashGRPOModelSource", "FlashGRPOComfyModel", "FlashGRPOPrompts", "FlashGRPOReward",
            "FlashGRPOGroupSampler", "FlashGRPORewardScorer", "FlashGRPOTrainer",
            "FlashGRPOLoraLoader"} <= set(mappings)
    assert {cls.CATEGORY for cls in mappings.values()} == {"Flash-GRPO"}
    for name, cls in mappings.items():
        assert callable(getattr(cls, cls.FUNCTION)), name
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS), name
        if hasattr(cls, "OUTPUT_IS_LIST"):
            assert len(cls.OUTPUT_IS_LIST) == len(cls.RETURN_TYPES), name
        assert cls.DESCRIPTION, name
    # The pack's modules live under the package name, not as top-level trainer/nodes.
    assert mappings["FlashGRPOTrainer"].__module__ == f"{PACK_NAME}.trainer.graph.node_types"
    web = ROOT / pack.WEB_DIRECTORY
    assert (web / "flash_grpo.js").is_file()


def test_every_input_has_a_tooltip(pack):
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, value in spec.get(section, {}).items():
                options = value[1] if len(value) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"


def _absolute_imports(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in ("trainer", "nodes")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("trainer", "nodes"):
                bad.append(node.module)
    return bad


def test_pack_modules_use_relative_imports_only():
    files = [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")), *sorted((ROOT / "trainer").rglob("*.py"))]
    assert len(files) > 10
    offenders = {str(f.relative_to(ROOT)): b for f in files if (b := _absolute_imports(f))}
    assert offenders == {}, f"absolute trainer/nodes imports inside the pack: {offenders}"


def test_workflows_convert_with_the_pack_nodes(pack):
    from trainer.graph.workflow import load_workflow

    for path in (ROOT / "workflows" / "demo.json", ROOT / "example_workflows" / "align.json"):
        prompt = load_workflow(path, pack.NODE_CLASS_MAPPINGS)
        assert {n["class_type"] for n in prompt.values()} >= {"FlashGRPOTrainer", "FlashGRPOPrompts"}
        prompts_node = next(n for n in prompt.values() if n["class_type"] == "FlashGRPOPrompts")
        assert prompts_node["inputs"]["prompt_file"] == "none"


def test_generate_with_lora_workflow_is_the_stock_wan_graph_plus_loader():
    data = json.loads((ROOT / "example_workflows" / "generate_with_lora.json").read_text())
    types = [n["type"] for n in data["nodes"]]
    for t in ("UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "EmptyHunyuanLatentVideo",
              "ModelSamplingSD3", "KSampler", "VAEDecode", "CreateVideo", "SaveVideo", "FlashGRPOLoraLoader"):
        assert t in types, t
    node = {n["type"]: n for n in data["nodes"]}
    assert node["UNETLoader"]["widgets_values"][0] == "wan2.1_t2v_1.3B_fp16.safetensors"
    assert node["CLIPLoader"]["widgets_values"][1] == "wan"
    links = {ln[0]: ln for ln in data["links"]}
    ids = {n["id"]: n["type"] for n in data["nodes"]}
    # UNETLoader -> aligned-LoRA loader -> ModelSamplingSD3 -> KSampler
    model_links = [(ids[ln[1]], ids[ln[3]]) for ln in links.values() if ln[5] == "MODEL"]
    assert ("UNETLoader", "FlashGRPOLoraLoader") in model_links
    assert ("FlashGRPOLoraLoader", "ModelSamplingSD3") in model_links
    assert ("ModelSamplingSD3", "KSampler") in model_links


# ---------------------------------------------------------------------------------- routes --


def test_route_run_names_and_paths_stay_inside_the_output_folder(pack, tmp_path):
    routes = sys.modules[f"{PACK_NAME}.nodes.routes"]
    root = tmp_path / "output" / "flash_grpo"
    run = root / "runs" / "flash-1"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text(
        json.dumps({"event": "start", "iterations": 2}) + "\nnot json\n"
        + json.dumps({"event": "iteration", "iteration": 0, "reward_mean": 0.5, "reward_std": 0.1,
                      "loss": 0.01, "prompts": ["x"], "seconds": {"total": 1.0}}) + "\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "events.jsonl").write_text("{}\n")
    (root / "runs" / "escape").symlink_to(secret)

    for bad in ("..", "../secret", "a/b", "", ".hidden", "x" * 200, "runs/../..", "a\\b", "%2e%2e"):
        assert not routes.valid_run_name(bad), bad
        assert routes.find_run_dir(root, bad) is None, bad
    assert routes.find_run_dir(root, "escape") is None, "a symlink out of the output folder"
    assert routes.find_run_dir(root, "flash-1") == run.resolve()
    events = routes.read_events(run)
    assert [e["event"] for e in events] == ["start", "iteration"]
    assert events[1] == {"event": "iteration", "iteration": 0, "reward_mean": 0.5, "reward_std": 0.1,
                         "loss": 0.01, "seconds": 1.0}
    assert routes.read_events(run, since=2)[0]["event"] == "iteration"

    async def serve():
        from aiohttp import web
        from aiohttp.test_utils import TestClient, TestServer

        table = web.RouteTableDef()
        registry = routes.RunRegistry()
        routes.register(table, lambda: root, registry)
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/flash_grpo/runs/flash-1/events")
            assert r.status == 200
            body = await r.json()
            assert [e["event"] for e in body["events"]] == ["start", "iteration"]
            assert (await client.get("/flash_grpo/runs/..%2Fsecret/events")).status in (400, 404)
            assert (await client.get("/flash_grpo/runs/escape/events")).status == 404
            assert (await client.get("/flash_grpo/runs/nope/events")).status == 404
            assert (await client.get("/flash_grpo/runs/flash-1/events?since=x")).status == 400
            registry.update({"run": "live", "run_dir": str(run), "node": "4", "total": 2},
                            {"event": "iteration", "iteration": 0})
            runs = (await (await client.get("/flash_grpo/runs")).json())["runs"]
            assert runs[0] == {"run": "live", "run_dir": str(run), "node": "4", "total": 2,
                               "status": "running", "iteration": 1}
            assert {r["run"] for r in runs} == {"live", "flash-1"}
    asyncio.run(serve())


# ------------------------------------------------------------------------------ the hosts --


class _FakeFolderPaths:
    def __init__(self, base: Path):
        self.base = base

    def get_input_directory(self):
        return str(self.base / "input")

    def get_output_directory(self):
        return str(self.base / "output")

    def get_temp_directory(self):
        return str(self.base / "temp")

    def get_folder_paths(self, folder):
        return [str(self.base / "models" / folder)]

    def get_filename_list(self, folder):
        d = self.base / "models" / folder
        return sorted(str(p.relative_to(d)) for p in d.rglob("*.safetensors")) if d.is_dir() else []

    def get_full_path(self, folder, name):
        p = self.base / "models" / folder / name
        return str(p) if p.is_file() else None


class _Interrupt(Exception):
    pass


class _FakeMM:
    InterruptProcessingException = _Interrupt

    def __init__(self):
        self.flag = False

    def processing_interrupted(self):
        return self.flag

    def throw_exception_if_processing_interrupted(self):
        if self.flag:
            self.flag = False
            raise _Interrupt()


class _FakeServer:
    def __init__(self):
        self.sent = []

    def send_sync(self, event, data):
        self.sent.append((event, data))


def test_comfy_host_lists_input_files_sends_events_and_converts_cancel(pack, tmp_path):
    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    (tmp_path / "input" / "sub").mkdir(parents=True)
    (tmp_path / "input" / "prompts.txt").write_text("a red ball\n")
    (tmp_path / "input" / "sub" / "more.txt").write_text("a blue cube\n")
    (tmp_path / "input" / "image.png").write_bytes(b"x")
    mm, server = _FakeMM(), _FakeServer()
    h = nodes.ComfyHost(_FakeFolderPaths(tmp_path), None, mm, server)
    assert h.input_files() == ["prompts.txt", "sub/more.txt"]
    assert h.input_file("sub/more.txt").read_text() == "a blue cube\n"
    with pytest.raises(Exception, match="not a file inside"):
        h.input_file("../../etc/passwd")
    run = {"node": "4", "run": "r1", "run_dir": str(tmp_path / "r1"), "total": 3}
    h.event(run, {"event": "iteration", "iteration": 0, "reward_mean": 1.0})
    assert server.sent == [("flash_grpo.progress", {**run, "event": {"event": "iteration", "iteration": 0, "reward_mean": 1.0}})]
    assert h.registry.get("r1")["status"] == "running"
    mm.flag = True
    assert h.interrupted()
    with pytest.raises(_Interrupt):
        h.cancelled(RuntimeError("run cancelled after 1 iterations"))
    assert not mm.flag, "the interrupt flag is consumed like ComfyUI's own check"
    assert h.runs_dir("runs") == tmp_path / "output" / "flash_grpo" / "runs"
    image = h.temp_image(b"\x89PNG", "x")
    assert image["type"] == "temp" and (tmp_path / "temp" / image["filename"]).is_file()


def test_prompt_file_is_a_picker_inside_comfyui_and_a_path_headless(pack, tmp_path):
    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    prompts_cls = pack.NODE_CLASS_MAPPINGS["FlashGRPOPrompts"]
    assert prompts_cls.INPUT_TYPES()["required"]["prompt_file"][0] == "STRING"
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "p.txt").write_text("a cat\n")
    old = host.current()
    host.install(nodes.ComfyHost(_FakeFolderPaths(tmp_path), None, _FakeMM()))
    try:
        choices = prompts_cls.INPUT_TYPES()["required"]["prompt_file"][0]
        assert choices == ["none", "p.txt"]
        (out,) = prompts_cls().build("", "p.txt", 0)
        assert out["prompt_file"] == str((tmp_path / "input" / "p.txt").resolve())
        assert prompts_cls().build("a dog", "none", 0)[0] == {"prompts": ["a dog"], "prompt_file": "", "eval_prompts": 0}
    finally:
        host.install(old)


# ------------------------------------------------------------------------ aligned LoRA loader --


class _LoraHost:
    """A host whose 'MODEL' is a ComfyUI-keyed state dict and whose patching records the call."""

    def __init__(self, base, lora_path: Path):
        self.base, self.lora_path, self.applied = base, lora_path, []

    def __getattr__(self, name):
        return getattr(self.base, name)

    def model_path(self, folder, name):
        assert folder == "loras"
        return self.lora_path

    def model_weight_shapes(self, model):
        return {k: tuple(v.shape) for k, v in model.items()}

    def apply_lora(self, model, path, strength):
        self.applied.append((path, strength))
        return model


def test_lora_loader_refuses_a_lora_for_another_model(pack, tmp_path):
    from trainer.engine.models import TINY_CONFIG

    UserError = sys.modules[f"{PACK_NAME}.trainer.errors"].UserError  # the pack's own class

    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    loader = pack.NODE_CLASS_MAPPINGS["FlashGRPOLoraLoader"]
    from diffusers import WanTransformer3DModel

    tiny = WanTransformer3DModel(**TINY_CONFIG["transformer"]).eval()
    path = tmp_path / "tiny.safetensors"
    save_tiny_lora(path, tiny)
    own_model = to_comfy_wan_keys(tiny.state_dict())
    wide_model = to_comfy_wan_keys(WanTransformer3DModel(**{**TINY_CONFIG["transformer"], "attention_head_dim": 24}).state_dict())
    deep_model = to_comfy_wan_keys(WanTransformer3DModel(**{**TINY_CONFIG["transformer"], "num_layers": 1}).state_dict())

    old = host.current()
    fake = _LoraHost(old, path)
    host.install(fake)
    try:
        out = loader().load(own_model, "flash_grpo/tiny.safetensors", 0.8)
        assert out["result"][0] is own_model and fake.applied == [(path, 0.8)]
        assert "strategy: flash" in out["result"][1] and "base model: tiny-comfy-wan" in out["result"][1]
        with pytest.raises(UserError, match=r"trained on another model.*dim 32 vs 48"):
            loader().load(wide_model, "flash_grpo/tiny.safetensors", 1.0)
        with pytest.raises(UserError, match=r"num_layers 2 vs 1"):
            loader().load(deep_model, "flash_grpo/tiny.safetensors", 1.0)
        # Without metadata the key shapes still refuse it.
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(path)), str(tmp_path / "bare.safetensors"))
        fake.lora_path = tmp_path / "bare.safetensors"
        with pytest.raises(UserError, match=r"width is 32 but the loaded MODEL's is 48"):
            loader().load(wide_model, "bare.safetensors", 1.0)
        with pytest.raises(UserError, match="not a Wan2.1 model"):
            loader().load({"input_blocks.0.weight": torch.zeros(2, 2)}, "bare.safetensors", 1.0)
        assert len(fake.applied) == 1, "a refused LoRA is never applied"
    finally:
        host.install(old)
    with pytest.raises(UserError, match="needs ComfyUI"):
        old.apply_lora(own_model, path, 1.0)


# ------------------------------------------------------------------- group sampler, scorer --


def test_group_sampler_outputs_one_image_batch_per_video_and_scorer_scores_them(pack):
    sampler = pack.NODE_CLASS_MAPPINGS["FlashGRPOGroupSampler"]
    scorer = pack.NODE_CLASS_MAPPINGS["FlashGRPORewardScorer"]
    model = {"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1}
    prompts = {"prompts": ["a red ball rolls to the left", "a blue square moves up"], "prompt_file": "", "eval_prompts": 0}
    out = sampler().sample(model, prompts, 2, 3, "tiny_demo", 0, 7, json.dumps({"sampling_steps": 4}))
    videos, per_video, g, info = out["result"]
    assert isinstance(videos, list) and len(videos) == 6 and g == 3
    for v in videos:
        assert v.shape == (9, 64, 64, 3) and v.dtype == torch.float32
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    assert per_video == [prompts["prompts"][0]] * 3 + [prompts["prompts"][1]] * 3
    info = json.loads(info)
    assert len(info["steps"]) == 2 and all(0 <= k < 2 for k in info["steps"]) and info["seed"] == 7
    assert not torch.equal(videos[0], videos[1]), "samples of a group differ (SDE step, own noise)"

    # ComfyUI hands list inputs to an INPUT_IS_LIST node as lists.
    reward = [{"name": "brightness", "weight": 1.0, "args": {}}]
    res = scorer().score([reward], [3], ["group"], [5.0], videos=videos, prompts=per_video)
    scores, adv, report = res["result"]
    assert len(scores) == len(adv) == 6
    for grp in (adv[:3], adv[3:]):
        assert abs(sum(grp)) < 1e-2  # zero mean per group (float32, tiny reward gaps)
    assert len(res["ui"]["text"]) == 7 and json.loads(report)["group_size"] == 3
    # A flattened VAE-decode batch split back into videos gives the same scores.
    flat = torch.cat(videos)
    res2 = scorer().score([reward], [3], ["group"], [5.0], videos=[flat], prompts=per_video[:1], frames_per_video=[9])
    assert res2["result"][0] == pytest.approx(scores, abs=1e-6)


def test_trainer_cancel_goes_through_the_host(pack, tmp_path):
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    trainer = pack.NODE_CLASS_MAPPINGS["FlashGRPOTrainer"]

    class StopHost(host.Host):
        def __init__(self):
            self.events, self.cancelled_with = [], None

        def interrupted(self):
            return True

        def event(self, run, event):
            self.events.append(event["event"])

        def cancelled(self, exc):
            self.cancelled_with = exc
            raise _Interrupt()

    old = host.current()
    h = StopHost()
    host.install(h)
    try:
        with pytest.raises(_Interrupt):
            trainer().train({"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1},
                            {"prompts": [], "prompt_file": "", "eval_prompts": 0},
                            [{"name": "brightness", "weight": 1.0, "args": {}}], "tiny_demo", "flash", 2, 1, 2,
                            1e-3, 2, 0, "cancel-me", False,
                            json.dumps({"output_dir": str(tmp_path), "sampling_steps": 4}), unique_id="9")
    finally:
        host.install(old)
    assert type(h.cancelled_with).__name__ == "RunCancelled"
    assert h.events[0] == "queued" and "cancelled" in h.events
    assert (tmp_path / "cancel-me" / "checkpoints" / "latest.pt").is_file(), "cancel keeps the checkpoint"
    with pytest.raises(Exception, match="letters, digits"):
        trainer().train({"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1},
                        {"prompts": [], "prompt_file": "", "eval_prompts": 0},
                        [{"name": "brightness", "weight": 1.0, "args": {}}], "tiny_demo", "flash", 1, 1, 2,
                        1e-3, 2, 0, "../escape", False, "{}")


# --------------------------------------------------------------------- ComfyUI model files --


def test_comfy_format_transformer_loads_single_file_with_equal_weights(tmp_path):
    from diffusers import WanTransformer3DModel

    from trainer.engine import models
    from trainer.engine.models import TINY_CONFIG

    # The built-in tiny transformer (head dim 16) with an explicit config folder.
    tiny = WanTransformer3DModel(**TINY_CONFIG["transformer"]).eval()
    save_comfy_wan(tmp_path / "tiny.safetensors", tiny)
    (tmp_path / "cfg" / "transformer").mkdir(parents=True)
    (tmp_path / "cfg" / "transformer" / "config.json").write_text(json.dumps(dict(tiny.config)))
    loaded = WanTransformer3DModel.from_single_file(str(tmp_path / "tiny.safetensors"), config=str(tmp_path / "cfg"),
                                                     subfolder="transformer", local_files_only=True)
    ref = tiny.state_dict()
    assert set(loaded.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())

    # A ComfyUI-loadable tiny Wan (head dim 128): the config is inferred from the file.
    wan = tiny_comfy_wan()
    save_comfy_wan(tmp_path / "wan.safetensors", wan, prefix="")
    inferred = models.wan_transformer_config(models._safetensors_shapes(tmp_path / "wan.safetensors"))
    assert {k: inferred[k] for k in ("num_layers", "num_attention_heads", "ffn_dim", "text_dim", "freq_dim")} == {
        "num_layers": 2, "num_attention_heads": 1, "ffn_dim": 256, "text_dim": 4096, "freq_dim": 256}
    assert models.shipped_wan_config(inferred) is None
    with pytest.raises(Exception, match="not a Wan2.1 diffusion model"):
        models.wan_transformer_config({"input_blocks.0.weight": (2, 2)})


@pytest.mark.parametrize("name,heads,layers", [("wan2.1_t2v_1.3b", 12, 30), ("wan2.1_t2v_14b", 40, 40)])
def test_shipped_configs_match_the_real_model_shapes(name, heads, layers):
    from diffusers import WanTransformer3DModel

    from trainer.engine import models

    config = json.loads((models.CONFIGS_DIR / name / "transformer" / "config.json").read_text())
    assert config["num_attention_heads"] == heads and config["num_layers"] == layers
    with torch.device("meta"):
        model = WanTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    shapes = {k: tuple(v.shape) for k, v in to_comfy_wan_keys(model.state_dict()).items()}
    assert models.shipped_wan_config(models.wan_transformer_config(shapes)) == name
    assert (models.CONFIGS_DIR / name / "vae" / "config.json").is_file()


def _save_comfy_umt5(path: Path, text_encoder, tokenizer_proto: bytes, fp8: bool = False) -> None:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    if fp8:
        for k in [k for k in sd if k.endswith(".weight") and ("SelfAttention.q" in k or "DenseReluDense" in k)]:
            scale = sd[k].abs().max() / 448.0
            sd[k] = (sd[k] / scale).to(torch.float8_e4m3fn)
            sd[k.removesuffix(".weight") + ".scale_weight"] = scale.reshape(()).float()
        sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    sd["spiece_model"] = torch.tensor(list(tokenizer_proto), dtype=torch.uint8)
    save_file(sd, str(path))


def tiny_comfy_umt5(path: Path, fp8_path: Path | None = None, d_model: int = 4096):
    """A tiny umt5 text encoder (width ``d_model``, the tiny ComfyUI Wan's text_dim) written as
    ComfyUI's umt5 files are (``spiece_model`` inside); returns the encoder."""
    import io

    import sentencepiece as spm
    from transformers import UMT5Config, UMT5EncoderModel

    from trainer.engine import models

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(models._TINY_CORPUS * 8), model_writer=buf,
                                   vocab_size=96, model_type="unigram", character_coverage=1.0, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
                                   num_threads=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        te = UMT5EncoderModel(UMT5Config(vocab_size=96, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                         relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_comfy_umt5(path, te, buf.getvalue())
    if fp8_path is not None:
        _save_comfy_umt5(fp8_path, te, buf.getvalue(), fp8=True)
    return te


def test_load_comfy_files_builds_a_pipeline_from_comfyui_files(tmp_path):
    from trainer.engine import models

    te = tiny_comfy_umt5(tmp_path / "umt5.safetensors", tmp_path / "umt5_fp8.safetensors")

    tok, loaded = models.load_comfy_text_encoder(tmp_path / "umt5.safetensors")
    ids = tok(["a red ball rolls"], return_tensors="pt").input_ids
    assert ids.shape[1] > 2 and int(ids[0, -1]) == 1
    with torch.no_grad():
        ref = te(ids).last_hidden_state
        assert torch.equal(loaded(ids).last_hidden_state, ref)
        _, fp8 = models.load_comfy_text_encoder(tmp_path / "umt5_fp8.safetensors")
        assert (fp8(ids).last_hidden_state - ref).abs().max() < 0.15 * ref.abs().max()

    wan = tiny_comfy_wan()
    save_comfy_wan(tmp_path / "diffusion_models" / "wan.safetensors", wan)
    tiny_pipe = models.build_tiny_pipeline()
    tiny_pipe.vae.save_pretrained(str(tmp_path / "vae"))
    manifest = models.write_comfy_manifest(tmp_path / f"wan{models.COMFY_MODEL_SUFFIX}",
                                           tmp_path / "diffusion_models" / "wan.safetensors",
                                           tmp_path / "vae", tmp_path / "umt5.safetensors")
    pipe = models.load_pipeline(str(manifest))
    ref = wan.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in pipe.transformer.state_dict().items())
    emb, _ = pipe.encode_prompt(["a red ball"], do_classifier_free_guidance=False, max_sequence_length=16)
    assert emb.shape == (1, 16, 4096)
    with pytest.raises(Exception, match="file not found"):
        models.load_comfy_files(tmp_path / "missing.safetensors", tmp_path / "vae", tmp_path / "umt5.safetensors")


# ------------------------------------------------------- ComfyUI caching, seeds, results --


class _RecordingMM(_FakeMM):
    """Also records ComfyUI's memory calls (unload_all_models, soft_empty_cache)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def unload_all_models(self):
        self.calls.append("unload_all_models")

    def soft_empty_cache(self):
        self.calls.append("soft_empty_cache")


class _Utils:
    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.node_id, self.values = total, node_id, []

        def update_absolute(self, value, total=None, preview=None):
            self.values.append(value)


def test_seeds_stay_fixed_and_the_scorer_is_an_output_node(pack):
    from trainer.graph.workflow import load_workflow

    for name in ("FlashGRPOTrainer", "FlashGRPOGroupSampler"):
        seed = pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]["seed"][1]
        # The front end adds its control widget to an INT named seed; "fixed" is its initial mode.
        assert seed["control_after_generate"] == "fixed", name
    assert pack.NODE_CLASS_MAPPINGS["FlashGRPORewardScorer"].OUTPUT_NODE is True
    prompt = load_workflow(ROOT / "workflows" / "demo.json", pack.NODE_CLASS_MAPPINGS)
    trainer = next(n["inputs"] for n in prompt.values() if n["class_type"] == "FlashGRPOTrainer")
    assert trainer["seed"] == 0 and trainer["run_name"] == ""  # the saved "fixed" mode is skipped


def test_is_changed_follows_the_prompt_file_and_the_lora_file(pack, tmp_path):
    import os

    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    prompts_cls = pack.NODE_CLASS_MAPPINGS["FlashGRPOPrompts"]
    loader = pack.NODE_CLASS_MAPPINGS["FlashGRPOLoraLoader"]
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "p.txt").write_text("a cat\n")
    lora = tmp_path / "models" / "loras" / "flash_grpo" / "x.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"1234")
    old = host.current()
    host.install(nodes.ComfyHost(_FakeFolderPaths(tmp_path), None, _FakeMM()))
    try:
        first = prompts_cls.IS_CHANGED(prompts="", prompt_file="p.txt", eval_prompts=0)
        assert first == prompts_cls.IS_CHANGED(prompts="", prompt_file="p.txt", eval_prompts=0)
        (tmp_path / "input" / "p.txt").write_text("a dog\n")
        assert prompts_cls.IS_CHANGED(prompts="", prompt_file="p.txt", eval_prompts=0) != first
        assert prompts_cls.IS_CHANGED(prompts="x", prompt_file="none", eval_prompts=0) == ""
        assert prompts_cls.IS_CHANGED(prompts="x", prompt_file="../../etc/passwd", eval_prompts=0) == ""

        before = loader.IS_CHANGED(model=None, lora_name="flash_grpo/x.safetensors", strength=1.0)
        assert before == loader.IS_CHANGED(model=None, lora_name="flash_grpo/x.safetensors", strength=1.0)
        lora.write_bytes(b"12345")  # republished under the same name
        os.utime(lora, ns=(lora.stat().st_atime_ns, lora.stat().st_mtime_ns + 10**9))
        assert loader.IS_CHANGED(model=None, lora_name="flash_grpo/x.safetensors", strength=1.0) != before
        assert loader.IS_CHANGED(model=None, lora_name="missing.safetensors", strength=1.0) == ""
    finally:
        host.install(old)


def test_trainer_frees_comfyui_memory_shows_its_images_links_its_lora_and_does_not_retrain(pack, tmp_path):
    from safetensors.torch import load_file

    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    trainer = pack.NODE_CLASS_MAPPINGS["FlashGRPOTrainer"]
    loader = pack.NODE_CLASS_MAPPINGS["FlashGRPOLoraLoader"]
    mm = _RecordingMM()
    h = nodes.ComfyHost(_FakeFolderPaths(tmp_path), _Utils(), mm)
    h.in_process = True  # this test's jobs run here; test_backend covers the backend's
    events = []
    h.event = lambda run, e: events.append(e["event"])
    args = ({"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1},
            {"prompts": ["a red ball", "a blue cube", "a green cone"], "prompt_file": "", "eval_prompts": 1},
            [{"name": "brightness", "weight": 1.0, "args": {}}], "tiny_demo", "flash", 2, 1, 2, 1e-3, 2, 0, "",
            False, json.dumps({"sampling_steps": 4, "eval_sampling_steps": 4}))
    old = host.current()
    host.install(h)
    try:
        out = trainer().train(*args, unique_id="7")
        lora_name, run_dir, metrics, sheet, curve, model, lora_sd = out["result"]
        assert model is None and lora_sd is None  # nothing takes those outputs here (no prompt graph)
        assert mm.calls == ["unload_all_models", "soft_empty_cache"], "ComfyUI's models leave the GPU first"
        # An unnamed run is named after its settings; its LoRA is published under ComfyUI's loras folder.
        run = Path(run_dir).name
        assert run.startswith("flash-") and len(run) == len("flash-") + 12
        assert lora_name == f"flash_grpo/{run}.safetensors"
        assert load_file(str(tmp_path / "models" / "loras" / lora_name))
        for image in (sheet, curve):
            assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3 and image.dtype == torch.float32
            assert image.shape[1] > 64 and 0 <= float(image.min()) and float(image.max()) <= 1 and image.std() > 0
        # The held-out videos before (top) and after, animated, where the run wrote them (output/), then
        # the sheet and the curve; "animated" makes the front end show them as <img> (WebP animates).
        webp, *pngs = out["ui"]["images"]
        assert out["ui"]["animated"] == (True,) and len(pngs) == 2 and all(i["type"] == "temp" for i in pngs)
        assert webp == {"filename": "before_after.webp", "subfolder": f"flash_grpo/runs/{Path(run_dir).name}/samples",
                        "type": "output"}
        from PIL import Image

        with Image.open(tmp_path / "output" / webp["subfolder"] / webp["filename"]) as im:
            assert im.is_animated and im.n_frames == 9  # tiny_demo: 9 frames
            first = np.asarray(im.convert("RGB"))
            im.seek(im.n_frames - 1)
            assert first.shape == (2 * (2 * 64 + 2), 2 * 64, 3)  # 1 held-out prompt: before over after, 2x
            assert not np.array_equal(first, np.asarray(im.convert("RGB")))
        assert "not trained again" not in out["ui"]["text"][0]

        # The lora_name output links to a LoRA loader's lora_name: ComfyUI's link check is
        # `not received_type != input_type`, with the loader's list of choices read at validation.
        choices = loader.INPUT_TYPES()["required"]["lora_name"][0]
        assert lora_name in choices
        received = trainer.RETURN_TYPES[0]
        assert not received != choices and received != ["euler", "uni_pc"] and received != "STRING"

        # Queued again unchanged: the finished run is returned, nothing trains or unloads.
        n_events, n_calls = len(events), len(mm.calls)
        again = trainer().train(*args, unique_id="7")
        assert again["result"][:3] == (lora_name, run_dir, metrics)
        assert torch.equal(again["result"][3], sheet)
        assert "not trained again" in again["ui"]["text"][0]
        assert len(events) == n_events and len(mm.calls) == n_calls

        # Another seed is another run.
        other = trainer().train(*args[:10], 1, *args[11:], unique_id="7")
        assert other["result"][1] != run_dir and "not trained again" not in other["ui"]["text"][0]
    finally:
        host.install(old)
        h.close()


# -------------------------------------------------- stock loaders, LoRA sampling, previews --


def _stock_graph(model_source: str = "UNETLoader", use_model_output: bool = False) -> dict:
    """A prompt graph: Load Diffusion Model / Load CLIP / Load VAE (or another MODEL node) feeding
    a trainer (node 10) and a group sampler (node 11)."""
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "wan", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_vae.safetensors"}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "x.safetensors",
                                                              "strength_model": 1.0}},
        "10": {"class_type": "FlashGRPOTrainer", "inputs": {"model": ["1" if model_source == "UNETLoader" else "4", 0],
                                                            "clip": ["2", 0], "vae": ["3", 0]}},
        "11": {"class_type": "FlashGRPOGroupSampler", "inputs": {"model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0]}},
    }
    if use_model_output:
        graph["12"] = {"class_type": "ModelSave", "inputs": {"model": ["10", 5], "filename_prefix": "x"}}
    return graph


def test_stock_loaders_are_read_from_the_prompt_graph_and_never_evaluated_for_the_backend(pack, tmp_path):
    """The trainer and the sampler take Load Diffusion Model / Load CLIP / Load VAE: their lazy
    inputs stay unevaluated (ComfyUI loads nothing) and the files the loaders name go to the backend
    in a manifest; only the trainer's used MODEL output makes ComfyUI evaluate its model input."""
    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    node_types = sys.modules[f"{PACK_NAME}.trainer.graph.node_types"]
    UserError = sys.modules[f"{PACK_NAME}.trainer.errors"].UserError
    trainer, sampler = pack.NODE_CLASS_MAPPINGS["FlashGRPOTrainer"], pack.NODE_CLASS_MAPPINGS["FlashGRPOGroupSampler"]
    for folder, name in (("diffusion_models", "wan.safetensors"), ("text_encoders", "umt5.safetensors"),
                         ("vae", "wan_vae.safetensors")):
        (tmp_path / "models" / folder).mkdir(parents=True)
        (tmp_path / "models" / folder / name).write_bytes(b"x")
    for cls in (trainer, sampler):
        spec = cls.INPUT_TYPES()
        assert spec["required"]["model"][0] == "FLASH_MODEL,MODEL" and spec["required"]["model"][1]["lazy"]
        assert spec["optional"]["clip"][1]["lazy"] and spec["optional"]["vae"][1]["lazy"]
        assert spec["hidden"]["prompt"] == "PROMPT"
    assert trainer.RETURN_TYPES[trainer.MODEL_OUTPUT] == "MODEL" and trainer.RETURN_TYPES[trainer.LORA_OUTPUT] == "LORA_MODEL"

    old = host.current()
    host.install(nodes.ComfyHost(_FakeFolderPaths(tmp_path), None, _FakeMM()))
    try:
        g = _stock_graph()
        assert trainer().check_lazy_status(model=None, prompt=g, unique_id="10") == []
        assert sampler().check_lazy_status(model=None, prompt=g, unique_id="11") == []
        used = _stock_graph(use_model_output=True)
        assert trainer().check_lazy_status(model=None, prompt=used, unique_id="10") == ["model"]
        assert trainer().check_lazy_status(model=object(), prompt=used, unique_id="10") == []
        ours = {"1": {"class_type": "FlashGRPOModelSource", "inputs": {}}, "10": {"class_type": "FlashGRPOTrainer",
                                                                            "inputs": {"model": ["1", 0]}}}
        assert trainer().check_lazy_status(model=None, prompt=ours, unique_id="10") == ["model"]
        patched = _stock_graph("LoraLoaderModelOnly")  # not evaluated: refused without loading anything
        assert trainer().check_lazy_status(model=None, prompt=patched, unique_id="10") == []

        model = node_types._model_source(None, g, "10")
        assert model["gpus"] == 1 and model["device"] == model["dtype"] == "auto"
        manifest = json.loads(Path(model["model"]).read_text())
        assert manifest["transformer"] == str(tmp_path / "models" / "diffusion_models" / "wan.safetensors")
        assert manifest["text_encoder"] == str(tmp_path / "models" / "text_encoders" / "umt5.safetensors")
        assert manifest["vae"] == str(tmp_path / "models" / "vae" / "wan_vae.safetensors")
        assert Path(model["model"]).parent == tmp_path / "output" / "flash_grpo" / "models"
        assert Path(model["model"]).name.startswith("wan-")
        # Another VAE (or text encoder) is another model value: a finished run is not returned for it.
        (tmp_path / "models" / "vae" / "other_vae.safetensors").write_bytes(b"x")
        other = _stock_graph()
        other["3"]["inputs"]["vae_name"] = "other_vae.safetensors"
        assert node_types._model_source(None, other, "10")["model"] != model["model"]
        assert node_types._model_source(None, _stock_graph(), "11")["model"] == model["model"]

        with pytest.raises(UserError, match=r"straight from\s+Load Diffusion Model \(UNETLoader\)"):
            node_types._model_source(None, patched, "10")
        no_vae = _stock_graph()
        del no_vae["10"]["inputs"]["vae"]
        with pytest.raises(UserError, match=r"Load VAE \(VAELoader\) connected to vae"):
            node_types._model_source(None, no_vae, "10")
        linked_name = _stock_graph()
        linked_name["2"]["inputs"]["clip_name"] = ["99", 0]
        with pytest.raises(UserError, match="choose its clip_name on the node"):
            node_types._model_source(None, linked_name, "10")
        flash = {"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1}
        assert node_types._model_source(flash, ours, "10") is flash
        with pytest.raises(UserError, match="clip and vae: used only with a MODEL"):
            node_types._model_source(flash, g, "10")
        # The MODEL output needs a MODEL input: refused before any training.
        with pytest.raises(UserError, match="model output .* needs the model input from Load Diffusion Model"):
            trainer().train(flash, {}, [], "tiny_demo", "flash", 1, 1, 2, 1e-3, 2, 0, "", False,
                            prompt={**used, "10": {**used["10"], "inputs": {"model": ["1", 0]}}}, unique_id="10")
    finally:
        host.install(old)


def test_group_sampler_samples_with_the_trainers_lora_at_a_strength(pack, tmp_path):
    """lora_name (a name in ComfyUI's loras list, as the trainer's lora_name output gives it) and
    lora_strength reach the job: strength 0 is the base model's videos, 1 differs; the optional
    LoRA combo accepts the trainer's lora_name link."""
    from trainer.engine import lora as lora_lib
    from trainer.engine.models import build_tiny_pipeline

    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    host = sys.modules[f"{PACK_NAME}.trainer.graph.host"]
    UserError = sys.modules[f"{PACK_NAME}.trainer.errors"].UserError
    sampler, trainer = pack.NODE_CLASS_MAPPINGS["FlashGRPOGroupSampler"], pack.NODE_CLASS_MAPPINGS["FlashGRPOTrainer"]
    transformer = build_tiny_pipeline(seed=0).transformer
    lora_lib.add_lora(transformer, rank=4, alpha=8.0, init_seed=1)
    with torch.no_grad():
        for name, p in lora_lib.lora_parameters(transformer):
            if ".lora_B." in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    lora_lib.save_aligned_lora(tmp_path / "models" / "loras" / "flash_grpo" / "run.safetensors", transformer, 4, 8.0,
                               {"trainer": "flash-grpo"})
    h = nodes.ComfyHost(_FakeFolderPaths(tmp_path), None, _RecordingMM())
    h.in_process = True
    old = host.current()
    host.install(h)
    try:
        choices = sampler.INPUT_TYPES()["optional"]["lora_name"][0]
        assert choices == ["none", "flash_grpo/run.safetensors"] and not trainer.RETURN_TYPES[0] != choices
        model = {"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1}
        prompts = {"prompts": ["a red ball"], "prompt_file": "", "eval_prompts": 0}
        run = lambda **kw: sampler().sample(model, prompts, 1, 2, "tiny_demo", 0, 0,  # noqa: E731
                                            json.dumps({"sampling_steps": 4}), **kw)
        base = run()["result"][0]
        zero = run(lora_name="flash_grpo/run.safetensors", lora_strength=0.0)["result"][0]
        one = run(lora_name="flash_grpo/run.safetensors", lora_strength=1.0)
        assert all(torch.equal(a, b) for a, b in zip(base, zero))
        assert any(not torch.equal(a, b) for a, b in zip(base, one["result"][0]))
        assert json.loads(one["result"][3])["lora"] == {"name": "flash_grpo/run.safetensors", "strength": 1.0}
        assert sampler.IS_CHANGED(lora_name="flash_grpo/run.safetensors") != ""
        with pytest.raises(UserError, match="not in ComfyUI's loras folder"):
            run(lora_name="flash_grpo/missing.safetensors")
    finally:
        host.install(old)
        h.close()


def test_a_preview_event_sets_the_progress_bar_preview_and_the_samples_route_serves_it(pack, tmp_path):
    from PIL import Image

    nodes = sys.modules[f"{PACK_NAME}.nodes"]
    routes = sys.modules[f"{PACK_NAME}.nodes.routes"]
    node_types = sys.modules[f"{PACK_NAME}.trainer.graph.node_types"]
    run_dir = tmp_path / "output" / "flash_grpo" / "runs" / "pv"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(run_dir / "samples" / "preview_00003.png")
    (run_dir / "samples" / "preview_00003.webp").write_bytes(b"RIFF....WEBP")
    event = {"event": "preview", "iteration": 2, "iterations_done": 3, "path": str(run_dir / "samples" / "preview_00003.webp"),
             "frame": str(run_dir / "samples" / "preview_00003.png"), "eval_reward_mean": 0.5}
    assert node_types.compact_event(event) == {"event": "preview", "iteration": 2, "iterations_done": 3,
                                               "eval_reward_mean": 0.5, "file": "preview_00003.webp"}

    bars = []

    class Utils:
        class ProgressBar(_Utils.ProgressBar):
            def __init__(self, total, node_id=None):
                super().__init__(total, node_id)
                bars.append(self)
                self.previews = []

            def update_absolute(self, value, total=None, preview=None):
                super().update_absolute(value, total, preview)
                self.previews.append(preview)

    h = nodes.ComfyHost(_FakeFolderPaths(tmp_path), Utils(), _FakeMM())
    h.preview("7", event, 10)
    (bar,) = bars
    assert bar.node_id == "7" and bar.values == [3]
    kind, image, size = bar.previews[0]
    assert kind == "JPEG" and image.size == (40, 20) and image.getpixel((0, 0)) == (255, 0, 0) and size == 512
    assert h.file_image(run_dir / "samples" / "preview_00003.webp") == {
        "filename": "preview_00003.webp", "subfolder": "flash_grpo/runs/pv/samples", "type": "output"}
    outside = tmp_path / "elsewhere.webp"
    outside.write_bytes(b"RIFF")
    ref = h.file_image(outside)
    assert ref["type"] == "temp" and (tmp_path / "temp" / ref["filename"]).read_bytes() == b"RIFF"

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def serve():
        table = web.RouteTableDef()
        routes.register(table, lambda: tmp_path / "output" / "flash_grpo", routes.RunRegistry())
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            ok = await client.get("/flash_grpo/runs/pv/samples/preview_00003.webp")
            assert ok.status == 200 and await ok.read() == b"RIFF....WEBP"
            assert ok.headers["Content-Type"] == "image/webp"
            for bad in ("config.json", "..%2Fevents.jsonl", "preview_3.webp", "before_after.gif"):
                assert (await client.get(f"/flash_grpo/runs/pv/samples/{bad}")).status in (400, 404), bad
            assert (await client.get("/flash_grpo/runs/pv/samples/before_after.webp")).status == 404
            assert (await client.get("/flash_grpo/runs/nope/samples/preview_00003.webp")).status == 404
    asyncio.run(serve())
