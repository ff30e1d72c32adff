"""HTTP routes under ``/flash_grpo/`` for the web extension's live chart (history after a reload).

``GET /flash_grpo/runs``: the runs this server knows (active first).
``GET /flash_grpo/runs/{run}/events?since=N``: a run's events from its ``events.jsonl`` (compact).
``GET /flash_grpo/runs/{run}/samples/{file}``: a preview of the run (``preview_NNNNN.webp|png``,
``before_after.webp|png``) from its ``samples/`` folder; other names are refused.

The browser only ever names a run; the server maps the name to a folder it knows or finds under
ComfyUI's output folder (``output/flash_grpo/<dir>/<run>``). Names are checked against
``RUN_NAME_RE`` and resolved paths must stay inside that folder (or be a run this server started).
Nothing here imports ComfyUI: ``register`` receives the server's route table.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from ..trainer.graph.node_types import RUN_NAME_RE, compact_event

PREFIX = "/flash_grpo"
MAX_EVENTS = 20000
SAMPLE_FILE_RE = re.compile(r"^(preview_\d{5}|before_after)\.(webp|png)$")
"""The files of a run's ``samples/`` folder the browser may fetch (previews, before/after)."""


class RunRegistry:
    """Runs started by this server (name -> info), updated from the trainer node's events."""

    def __init__(self):
        self._lock = threading.Lock()
        self.runs: dict[str, dict] = {}

    def update(self, run: dict, event: dict) -> None:
        with self._lock:
            info = self.runs.setdefault(run["run"], {"run": run["run"], "run_dir": run["run_dir"]})
            info.update({"node": run.get("node"), "total": run.get("total"), "run_dir": run["run_dir"]})
            kind = event.get("event")
            if kind in ("queued", "start", "iteration", "resume"):
                info["status"] = "running"
            elif kind in ("done", "cancelled", "error"):
                info["status"] = kind
            if "iteration" in event and kind == "iteration":
                info["iteration"] = event["iteration"] + 1

    def get(self, name: str) -> dict | None:
        with self._lock:
            info = self.runs.get(name)
            return dict(info) if info else None

    def all(self) -> list[dict]:
        with self._lock:
            return [dict(v) for v in self.runs.values()]


def valid_run_name(name: str) -> bool:
    return bool(RUN_NAME_RE.match(name or "")) and ".." not in name


def find_run_dir(output_root: Path, name: str, registry: RunRegistry | None = None) -> Path | None:
    """The folder of run ``name``: one this server started, else ``output_root/*/name``.

    ``None`` for an invalid name, an unknown run, or a path escaping ``output_root``.
    """
    if not valid_run_name(name):
        return None
    info = registry.get(name) if registry else None
    if info:
        return Path(info["run_dir"])
    root = Path(output_root).resolve()
    if not root.is_dir():
        return None
    for sub in sorted(root.iterdir()):
        candidate = (sub / name).resolve()
        if sub.is_dir() and root in candidate.parents and (candidate / "events.jsonl").is_file():
            return candidate
    return None


def read_events(run_dir: Path, since: int = 0) -> list[dict]:
    """Compact events of ``run_dir/events.jsonl`` from line ``since`` on (bad lines skipped)."""
    path = Path(run_dir) / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < since:
                continue
            try:
                out.append(compact_event(json.loads(line)))
            except (json.JSONDecodeError, AttributeError, TypeError):
                continue
            if len(out) >= MAX_EVENTS:
                break
    return out


def list_runs(output_root: Path, registry: RunRegistry) -> list[dict]:
    runs = {r["run"]: r for r in registry.all()}
    root = Path(output_root).resolve()
    if root.is_dir():
        for events in sorted(root.glob("*/*/events.jsonl")):
            name = events.parent.name
            if valid_run_name(name) and name not in runs and root in events.resolve().parents:
                runs[name] = {"run": name, "status": "finished or stopped"}
    return sorted(runs.values(), key=lambda r: (r.get("status") != "running", r["run"]))


def register(routes, output_root_fn, registry: RunRegistry) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (``PromptServer.instance.routes``)."""
    from aiohttp import web

    @routes.get(PREFIX + "/runs")
    async def get_runs(request):
        return web.json_response({"runs": list_runs(Path(output_root_fn()), registry)})

    @routes.get(PREFIX + "/runs/{run}/events")
    async def get_run_events(request):
        name = request.match_info["run"]
        if not valid_run_name(name):
            return web.json_response({"error": "invalid run name"}, status=400)
        run_dir = find_run_dir(Path(output_root_fn()), name, registry)
        if run_dir is None:
            return web.json_response({"error": f"unknown run {name}"}, status=404)
        try:
            since = max(int(request.query.get("since", "0")), 0)
        except ValueError:
            return web.json_response({"error": "since must be an integer"}, status=400)
        info = registry.get(name) or {"run": name, "status": "finished or stopped"}
        return web.json_response({**info, "events": read_events(run_dir, since)})

    @routes.get(PREFIX + "/runs/{run}/samples/{file}")
    async def get_run_sample(request):
        name, file = request.match_info["run"], request.match_info["file"]
        if not valid_run_name(name) or not SAMPLE_FILE_RE.match(file):
            return web.json_response({"error": "invalid run or file name"}, status=400)
        run_dir = find_run_dir(Path(output_root_fn()), name, registry)
        path = run_dir / "samples" / file if run_dir is not None else None
        if path is None or not path.is_file():
            return web.json_response({"error": f"no {file} in run {name}"}, status=404)
        return web.FileResponse(path, headers={"Content-Type": f"image/{path.suffix[1:]}", "Cache-Control": "no-cache"})
