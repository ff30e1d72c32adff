"""ComfyUI-style node types shared by ComfyUI and the headless runner, the host interface they
talk to, and the workflow executor. Imports the service layer; never the ComfyUI glue (``nodes/``)."""
