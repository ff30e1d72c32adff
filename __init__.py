"""ComfyUI entry point of the Flash-GRPO node pack.

ComfyUI imports this folder as a package from ``custom_nodes/``; everything inside uses relative
imports (``nodes`` and ``trainer`` are never imported at top level: ``nodes`` is ComfyUI's own).
``WEB_DIRECTORY`` holds the front-end extension (live training chart, scorer table).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
