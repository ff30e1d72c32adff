"""Run ComfyUI workflow files headlessly with a given set of node classes.

The node classes this pack registers in ComfyUI (``NODE_CLASS_MAPPINGS``) are the same classes the
headless runner (``python -m trainer.run WORKFLOW.json``) executes. This module is the small part of
ComfyUI the runner needs, written for that one purpose:

``load_workflow(path, node_classes)``
    Read a workflow JSON file in either of ComfyUI's two formats and return an *API-format prompt*.
``workflow_to_prompt(data, node_classes)``
    The same for an already-parsed JSON object.
``validate_prompt(prompt, node_classes, outputs_wanted=None)``
    Check a prompt before anything heavy runs; report every problem at once in one ``UserError``.
``execution_order(prompt, node_classes, outputs_wanted=None)``
    The node ids that would run, in the order they would run.
``execute_prompt(prompt, node_classes, on_node_start=None, outputs_wanted=None)``
    Validate, then run the nodes; return ``{node_id: result_tuple}`` (with ``.ui`` for UI data).

Formats
-------
*API format* (ComfyUI's "Export (API)", and the body of ``POST /prompt``)::

    {"3": {"class_type": "Add", "inputs": {"a": 5, "b": ["1", 0]}, "_meta": {...}}, ...}

An input value that is a two-element list ``[source_node_id: str, output_index: int]`` is a
connection to another node's output (ComfyUI's own rule); anything else is a literal value. We also
accept the ``POST /prompt`` body ``{"prompt": {...}}``. ``_meta`` is dropped.

*UI format* (ComfyUI's "Save", and the ``workflows/*.json`` templates a pack ships)::

    {"nodes": [{"id": 3, "type": "Add", "mode": 0,
                "inputs": [{"name": "a", "type": "INT", "widget": {"name": "a"}, "link": 2}],
                "outputs": [{"name": "INT", "type": "INT", "links": [4]}],
                "widgets_values": [0, 0, 2.0]}, ...],
     "links": [[link_id, from_node, from_slot, to_node, to_slot, "TYPE"], ...], ...}

Converting UI format needs the node classes, because ``widgets_values`` is a bare list whose
positions follow the order of the widget inputs in the class's ``INPUT_TYPES()`` (required, then
optional). The rules, as ComfyUI's front end applies them:

* Widget inputs are those of type INT, FLOAT, STRING, BOOLEAN, COMBO or a list of choices, unless
  their options say ``"forceInput": True``. Other types (IMAGE, FLASH_MODEL, ...) are sockets only and
  have no entry in ``widgets_values``.
* An INT widget with option ``control_after_generate`` (or named ``seed``/``noise_seed``), and a combo
  with that option, is followed in ``widgets_values`` by the control mode ("fixed", "increment",
  "decrement", "randomize"). We skip that entry when it is there. The runner never changes values
  after a run: the value saved in the file is the value used.
* ComfyUI's front end keeps a value in ``widgets_values`` for every widget, also for a widget whose
  input is connected by a link (its value is then unused). Some hand-written or older files leave
  connected widgets out instead. We try "every widget" first and "only unconnected widgets" second,
  and take whichever accounts for exactly the number of values saved; if neither does, values are
  mapped onto every widget in order, extra trailing values (such as an upload button's) are
  ignored and missing trailing ones later take their defaults, as ComfyUI does.
* ``widgets_values`` saved as a dict (some packs do this) is read by input name.
* An input entry with a ``link`` id is a connection, looked up in ``links``; this includes a widget
  converted to an input (an entry with a ``widget`` key). The connection wins over the widget value.
* ``mode``: 0 (always) and 1/3 run; 2 (muted / "never") nodes are left out together with links
  from them (a connected widget then keeps its saved value, a socket input is left unconnected).
  4 (bypassed) nodes are left out and their links pass through: a consumer of the bypassed node's
  output slot *k* of type *T* is connected to whatever feeds the bypassed node's input *k* if that
  input has type *T*, else its first input of type *T* - the front end's own rule. Nothing of type
  *T* to pass through means the input is left unconnected (validation then names it if required).
* Front-end-only nodes: ``Note`` and ``MarkdownNote`` are dropped; ``Reroute`` passes its input
  through; ``PrimitiveNode`` feeds its widget value (``widgets_values[0]``) as a literal into every
  input it is linked to.
* Subgraphs (``definitions.subgraphs``) and old group nodes (``extra.groupNodes``) are not expanded:
  a clear error asks to unpack / convert them in ComfyUI first.

Execution
---------
Only the nodes that output nodes (``OUTPUT_NODE = True``) need run, in topological order with ties
broken by numeric node id, so the order is deterministic; with no output node at all, every node
runs. ``outputs_wanted`` overrides which nodes count as outputs. Each node is instantiated
(``cls()``) and ``getattr(obj, cls.FUNCTION)(**kwargs)`` is called with connected inputs replaced by
upstream results, literal INT/FLOAT values converted with ``int()``/``float()``, missing required
widget values filled from the ``default`` option (a combo's first choice without one), and absent
optional inputs not passed at all. Hidden inputs ``UNIQUE_ID`` and ``PROMPT`` are supplied
(``EXTRA_PNGINFO`` and ``DYNPROMPT`` as ``None``). ``VALIDATE_INPUTS`` runs during validation, as in
ComfyUI: with the node's literal values only, and ComfyUI's built-in combo/range checks skipped for
the inputs it names in its signature.

Not supported (a validation error says so): ``INPUT_IS_LIST`` / ``OUTPUT_IS_LIST`` list mapping,
node expansion (results with ``"expand"``). No caching: every needed node runs on every call.

Errors
------
Everything the user can fix is a ``UserError``. A node that raises ``UserError`` (or a subclass) has
its exception propagated unchanged; any other exception from a node becomes ``NodeError`` naming the
node id and class, with the original exception chained (``raise ... from e``) for ``--debug``.
"""

from __future__ import annotations

import difflib
import heapq
import inspect
import json
import os
from typing import Any, Callable, Iterable

from ..errors import UserError

__all__ = [
    "NodeError",
    "ExecutionResults",
    "load_workflow",
    "workflow_to_prompt",
    "validate_prompt",
    "execution_order",
    "execute_prompt",
    "is_link",
]

MODE_ALWAYS = 0
MODE_MUTED = 2
MODE_BYPASSED = 4

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
"""Declared input types that the ComfyUI front end draws as widgets (plus lists of choices)."""

CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
"""Values of the extra "control after generate" widget that the UI saves after a seed-like widget."""

SEED_NAMES = ("seed", "noise_seed")
"""INT inputs with these names get a control widget in the UI even without the option."""

NOTE_TYPES = ("Note", "MarkdownNote")
REROUTE_TYPE = "Reroute"
PRIMITIVE_TYPE = "PrimitiveNode"
FRONTEND_ONLY_TYPES = NOTE_TYPES + (REROUTE_TYPE, PRIMITIVE_TYPE)
"""UI node types that exist only in ComfyUI's front end and never reach the server."""

KNOWN_HIDDEN = ("UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT")

NodeClasses = dict  # dict[str, type]: class_type -> node class
Prompt = dict  # dict[str, dict]: node id -> {"class_type": str, "inputs": dict}


class NodeError(UserError):
    """A node's FUNCTION raised an exception that was not a ``UserError``.

    The message names the node id and class and gives the original exception's type and text; the
    original exception is chained as ``__cause__`` so ``trainer.run --debug`` can show its traceback.

    Attributes: ``node_id`` (str), ``class_type`` (str).
    """

    def __init__(self, node_id: str, class_type: str, detail: str):
        self.node_id = str(node_id)
        self.class_type = class_type
        super().__init__(
            f"node {node_id} ({class_type}) failed: {detail} (run with --debug to see the traceback)"
        )


class ExecutionResults(dict):
    """``{node_id: result_tuple}`` for every node that ran, in the order they ran.

    ``.ui`` holds ``{node_id: ui_dict}`` for nodes that returned ComfyUI-style
    ``{"ui": {...}, "result": (...)}``.
    """

    def __init__(self):
        super().__init__()
        self.ui: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------
# Small helpers about node classes and prompts
# --------------------------------------------------------------------------------------------


def is_link(value: Any) -> bool:
    """True when an API-format input value is a connection ``[source_id: str, output_index: int]``.

    This is ComfyUI's own rule; any other value (including ``[4, 0]`` with an int node id) is a
    literal.
    """
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _node_sort_key(node_id: str):
    """Sort key ordering node ids numerically ("2" < "10"; "5:3" by parts); others after, by text."""
    try:
        return (0, tuple(int(part) for part in str(node_id).split(":")), str(node_id))
    except ValueError:
        return (1, (), str(node_id))


def _class_inputs(class_type: str, cls: type) -> dict[str, dict]:
    """Return ``cls.INPUT_TYPES()`` as ``{"required": {...}, "optional": {...}, "hidden": {...}}``.

    Missing sections become empty dicts. A broken ``INPUT_TYPES`` is reported as a ``UserError``
    naming the class (it is a bug in the node pack, but the user needs to know which node).
    """
    try:
        spec = cls.INPUT_TYPES()
    except Exception as e:  # noqa: BLE001 - any failure here is reported with the class name
        raise UserError(
            f"node type {class_type}: INPUT_TYPES() failed with {type(e).__name__}: {e}; "
            "the node pack providing it is broken or incompatible"
        ) from e
    if not isinstance(spec, dict):
        raise UserError(f"node type {class_type}: INPUT_TYPES() must return a dict, got {type(spec).__name__}")
    out = {}
    for section in ("required", "optional", "hidden"):
        value = spec.get(section) or {}
        if not isinstance(value, dict):
            raise UserError(f"node type {class_type}: INPUT_TYPES()['{section}'] must be a dict")
        out[section] = value
    return out


def _split_spec(spec: Any) -> tuple[Any, dict]:
    """Split an input spec ``(TYPE, options)`` / ``(TYPE,)`` / ``TYPE`` into ``(TYPE, options)``."""
    if isinstance(spec, (tuple, list)) and spec:
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return spec[0], options
    return spec, {}


def _declared_inputs(class_type: str, cls: type) -> list[tuple[str, Any, dict, bool]]:
    """All visible inputs as ``(name, TYPE, options, required)`` in INPUT_TYPES order (required first)."""
    sections = _class_inputs(class_type, cls)
    out = []
    for section, required in (("required", True), ("optional", False)):
        for name, spec in sections[section].items():
            type_, options = _split_spec(spec)
            out.append((name, type_, options, required))
    return out


def _widget_kind(type_: Any, options: dict) -> str | None:
    """"INT"/"FLOAT"/"STRING"/"BOOLEAN"/"COMBO" when the UI draws this input as a widget, else None."""
    if options.get("forceInput"):
        return None
    if isinstance(type_, (list, tuple)):
        return "COMBO"
    if isinstance(type_, str) and type_ in WIDGET_TYPES:
        return type_
    return None


def _combo_choices(type_: Any, options: dict) -> list | None:
    """The allowed values of a combo input: the list itself, or ``options["options"]`` for "COMBO"."""
    if isinstance(type_, (list, tuple)):
        return list(type_)
    if type_ == "COMBO":
        choices = options.get("options")
        return list(choices) if isinstance(choices, (list, tuple)) else None
    return None


def _has_control_widget(name: str, kind: str | None, options: dict) -> bool:
    """True when the UI adds a "control after generate" widget (and saved value) after this input."""
    if kind == "INT" and name in SEED_NAMES:
        return True
    return kind in ("INT", "COMBO") and bool(options.get("control_after_generate"))


def _default_for(kind: str | None, type_: Any, options: dict) -> tuple[bool, Any]:
    """``(True, value)`` for a widget's default (``default`` option, else a combo's first choice)."""
    if kind is None:
        return False, None
    if "default" in options:
        return True, options["default"]
    if kind == "COMBO":
        choices = _combo_choices(type_, options)
        if choices:
            return True, choices[0]
    return False, None


def _return_types(cls: type) -> tuple:
    """``cls.RETURN_TYPES`` as a tuple (empty when absent)."""
    return tuple(getattr(cls, "RETURN_TYPES", ()) or ())


def _is_output_node(cls: type) -> bool:
    return bool(getattr(cls, "OUTPUT_NODE", False))


def _types_compatible(output_type: Any, input_type: Any) -> bool:
    """ComfyUI's link type rule: "*" matches anything; "A,B" matches A or B; non-strings aren't checked."""
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return True
    if output_type == "*" or input_type == "*":
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def _type_label(type_: Any) -> str:
    if isinstance(type_, (list, tuple)):
        return "COMBO"
    return str(type_)


def _coerce_literal(kind: str | None, value: Any) -> Any:
    """Convert a literal widget value the way ComfyUI does (INT -> int(), FLOAT -> float()).

    Raises ``ValueError``/``TypeError`` for values that cannot be converted; BOOLEAN must already be
    a bool (``bool("false")`` would silently be True) and STRING a str.
    """
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if kind == "STRING":
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_workflow(path: str | os.PathLike, node_classes: NodeClasses) -> Prompt:
    """Read a ComfyUI workflow JSON file (UI or API format) and return an API-format prompt.

    ``node_classes`` maps ``class_type`` names to node classes; it is needed to map a UI file's
    ``widgets_values`` onto input names. The result is
    ``{node_id: {"class_type": str, "inputs": {name: value | [src_id, out_index]}}}``.
    It is not validated: call ``validate_prompt`` (``execute_prompt`` does).

    Raises ``UserError`` for a missing or unreadable file, invalid JSON (with line and column), an
    unrecognised structure, node types missing from ``node_classes`` in a UI file (with close
    matches), and subgraphs / group nodes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(
            f"workflow file not found: {path}; pass the path of a workflow JSON saved from ComfyUI "
            "(Workflow > Save, or Export (API)), e.g. one of this pack's workflows/*.json"
        )
    if os.path.isdir(path):
        raise UserError(f"workflow path is a directory, not a file: {path}; pass the path of a .json file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"workflow file {path} is not UTF-8 text ({e}); pass a workflow .json file") from e
    except OSError as e:
        raise UserError(f"cannot read workflow file {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"workflow file {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
            "fix the file or save the workflow from ComfyUI again"
        ) from e
    return workflow_to_prompt(data, node_classes, source=path)


def workflow_to_prompt(data: Any, node_classes: NodeClasses, source: str = "workflow") -> Prompt:
    """Turn a parsed workflow (UI format, API format or ``{"prompt": API}``) into an API prompt.

    ``source`` only names the workflow in error messages. See the module docstring for the rules.
    """
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return _ui_to_prompt(data, node_classes, source)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        inner = data["prompt"]
        if inner and all(isinstance(v, dict) and "class_type" in v for v in inner.values()):
            return _normalise_api(inner, source)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return _normalise_api(data, source)
    if isinstance(data, dict) and not data:
        raise UserError(f"{source} contains no nodes; save a workflow with nodes from ComfyUI")
    raise UserError(
        f"{source} is neither a ComfyUI UI-format workflow (top-level 'nodes' and 'links') nor an "
        "API-format prompt (node id -> {'class_type', 'inputs'}); save it from ComfyUI with "
        "Workflow > Save or Export (API)"
    )


def _normalise_api(data: dict, source: str) -> Prompt:
    """Copy an API-format prompt keeping only ``class_type`` and ``inputs``, with str node ids."""
    prompt: Prompt = {}
    for node_id, node in data.items():
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise UserError(f"{source}: node {node_id} has no valid 'class_type'; export the workflow again")
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise UserError(f"{source}: node {node_id} ({class_type}) has 'inputs' that is not an object")
        prompt[str(node_id)] = {"class_type": class_type, "inputs": dict(inputs)}
    return prompt


def _close_matches(name: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)


def _unknown_type_message(node_id: str, class_type: str, node_classes: NodeClasses) -> str:
    msg = f"node {node_id}: unknown node type '{class_type}'"
    matches = _close_matches(class_type, node_classes)
    if matches:
        msg += "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
    else:
        msg += "; check the spelling or load the node pack that provides it"
    return msg


def _link_table(links: Any, source: str) -> dict[int, tuple]:
    """``{link_id: (from_node, from_slot, to_node, to_slot, type)}`` from either links form.

    ComfyUI saves ``[id, from, from_slot, to, to_slot, type]`` lists; the newer schema (version 1)
    saves objects with ``id/origin_id/origin_slot/target_id/target_slot/type``.
    """
    table: dict[int, tuple] = {}
    if links is None:
        return table
    if not isinstance(links, list):
        raise UserError(f"{source}: 'links' must be a list; save the workflow from ComfyUI again")
    for entry in links:
        if isinstance(entry, list) and len(entry) >= 5:
            link_id, origin, origin_slot, target, target_slot = entry[:5]
            link_type = entry[5] if len(entry) > 5 else "*"
        elif isinstance(entry, dict) and "id" in entry:
            link_id = entry["id"]
            origin, origin_slot = entry.get("origin_id"), entry.get("origin_slot", 0)
            target, target_slot = entry.get("target_id"), entry.get("target_slot", 0)
            link_type = entry.get("type", "*")
        else:
            continue  # null / malformed entries carry no connection
        table[link_id] = (origin, origin_slot, target, target_slot, link_type)
    return table


def _map_widget_values(values: list, widgets: list[tuple[str, str, dict]], connected: set[str]) -> dict:
    """Map a UI node's ``widgets_values`` list onto widget input names.

    ``widgets`` is ``[(name, kind, options), ...]`` in INPUT_TYPES order; ``connected`` holds the
    names of inputs that have a link. See the module docstring for the strategy.
    """

    def walk(slots):
        mapped, i = {}, 0
        for name, kind, options in slots:
            if i >= len(values):
                return mapped, i, False
            mapped[name] = values[i]
            i += 1
            if (
                _has_control_widget(name, kind, options)
                and i < len(values)
                and isinstance(values[i], str)
                and values[i] in CONTROL_MODES
            ):
                i += 1  # the saved "control after generate" mode
        return mapped, i, True

    every, used_every, complete_every = walk(widgets)
    if complete_every and used_every == len(values):
        return every
    if connected:
        unconnected = [w for w in widgets if w[0] not in connected]
        only, used_only, complete_only = walk(unconnected)
        if complete_only and used_only == len(values):
            return only
    return every


def _ui_input_name(entry: dict) -> str:
    """The input name of a UI node's ``inputs`` entry (a converted widget's ``widget.name`` first)."""
    widget = entry.get("widget")
    if isinstance(widget, dict) and widget.get("name"):
        return widget["name"]
    return entry.get("name")


def _ui_to_prompt(data: dict, node_classes: NodeClasses, source: str) -> Prompt:
    """Convert a UI-format workflow to an API-format prompt (rules in the module docstring)."""
    nodes = [n for n in data["nodes"] if isinstance(n, dict)]
    by_id = {n.get("id"): n for n in nodes}
    links = _link_table(data.get("links"), source)
    definitions = data.get("definitions") or {}
    subgraphs = {
        sg.get("id"): sg.get("name") or sg.get("id")
        for sg in (definitions.get("subgraphs") or [])
        if isinstance(sg, dict)
    }
    group_nodes = (data.get("extra") or {}).get("groupNodes") or {}

    # 1. Every node type must be known before anything can be mapped; report them all together.
    problems = []
    for node in nodes:
        node_id, node_type = node.get("id"), node.get("type")
        if node.get("mode", MODE_ALWAYS) in (MODE_MUTED, MODE_BYPASSED):
            continue
        if node_type in FRONTEND_ONLY_TYPES or node_type in node_classes:
            continue
        if node_type in subgraphs:
            problems.append(
                f"node {node_id} is a subgraph ('{subgraphs[node_type]}'), which the headless runner "
                "does not expand; in ComfyUI right-click it > Unpack Subgraph, then save again"
            )
        elif isinstance(node_type, str) and (node_type in group_nodes or node_type.startswith("workflow>")
                                             or node_type.startswith("workflow/")):
            problems.append(
                f"node {node_id} is a group node ('{node_type}'), which the headless runner does not "
                "expand; in ComfyUI right-click it > Convert to nodes, then save again"
            )
        elif not isinstance(node_type, str) or not node_type:
            problems.append(f"node {node_id} has no 'type'; save the workflow from ComfyUI again")
        else:
            problems.append(_unknown_type_message(str(node_id), node_type, node_classes))
    if problems:
        raise UserError(f"{source} cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))

    def resolve(link_id: Any, seen: frozenset = frozenset()):
        """Follow a link to its real source.

        Returns ``("link", src_id, slot)``, ``("value", literal)`` for a PrimitiveNode, or ``None``
        when nothing feeds it (muted or note source, bypass with no matching input, stale link).
        """
        if link_id is None or link_id in seen or link_id not in links:
            return None
        seen = seen | {link_id}
        origin, origin_slot, _target, _target_slot, link_type = links[link_id]
        src = by_id.get(origin)
        if src is None:
            return ("link", str(origin), origin_slot)  # validation reports the missing node
        src_type, src_mode = src.get("type"), src.get("mode", MODE_ALWAYS)
        if src_type == REROUTE_TYPE:
            src_inputs = src.get("inputs") or []
            return resolve(src_inputs[0].get("link"), seen) if src_inputs else None
        if src_type == PRIMITIVE_TYPE:
            values = src.get("widgets_values")
            return ("value", values[0]) if isinstance(values, list) and values else None
        if src_type in NOTE_TYPES or src_mode == MODE_MUTED:
            return None
        if src_mode == MODE_BYPASSED:
            src_inputs = src.get("inputs") or []
            outputs = src.get("outputs") or []
            wanted = link_type
            if 0 <= origin_slot < len(outputs) and outputs[origin_slot].get("type"):
                wanted = outputs[origin_slot].get("type")
            candidates = []
            if 0 <= origin_slot < len(src_inputs):
                candidates.append(src_inputs[origin_slot])
            candidates.extend(src_inputs)
            for inp in candidates:
                if inp.get("type") == wanted:
                    return resolve(inp.get("link"), seen)  # an unconnected match feeds nothing
            return None
        return ("link", str(origin), origin_slot)

    # 2. Convert every node that reaches the server.
    prompt: Prompt = {}
    for node in nodes:
        node_id, node_type = node.get("id"), node.get("type")
        if node_type in FRONTEND_ONLY_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_MUTED, MODE_BYPASSED):
            continue
        cls = node_classes[node_type]
        declared = _declared_inputs(node_type, cls)
        widgets = []
        for name, type_, options, _required in declared:
            kind = _widget_kind(type_, options)
            if kind is not None:
                widgets.append((name, kind, options))

        ui_inputs = [i for i in (node.get("inputs") or []) if isinstance(i, dict)]
        connected = {_ui_input_name(i) for i in ui_inputs if i.get("link") is not None}

        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):
            for name, _kind, _options in widgets:
                if name in values:
                    inputs[name] = values[name]
        elif isinstance(values, list):
            inputs.update(_map_widget_values(values, widgets, connected))

        for entry in ui_inputs:
            if entry.get("link") is None:
                continue
            source_of = resolve(entry.get("link"))
            name = _ui_input_name(entry)
            if source_of is None:
                continue  # keep the saved widget value, if any; a socket stays unconnected
            if source_of[0] == "value":
                inputs[name] = source_of[1]
            else:
                inputs[name] = [source_of[1], int(source_of[2])]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs}
    if not prompt:
        raise UserError(f"{source} has no nodes that can run (only notes, reroutes or muted nodes)")
    return prompt


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _output_ids(prompt: Prompt, node_classes: NodeClasses, outputs_wanted: Iterable | None) -> list[str]:
    """The node ids to compute: ``outputs_wanted``, else the OUTPUT_NODE nodes, else every node."""
    if outputs_wanted is not None:
        wanted = [str(n) for n in outputs_wanted]
        missing = [n for n in wanted if n not in prompt]
        if missing:
            raise UserError(
                f"requested output node(s) {', '.join(missing)} are not in the workflow; "
                f"node ids present: {', '.join(sorted(prompt, key=_node_sort_key))}"
            )
        return wanted
    outputs = [
        nid for nid, node in prompt.items()
        if node.get("class_type") in node_classes and _is_output_node(node_classes[node["class_type"]])
    ]
    return outputs if outputs else list(prompt)


def _needed_nodes(prompt: Prompt, node_classes: NodeClasses, outputs_wanted: Iterable | None) -> set[str]:
    """Output nodes and every node they depend on through links (links to missing nodes ignored)."""
    needed: set[str] = set()
    stack = list(_output_ids(prompt, node_classes, outputs_wanted))
    while stack:
        nid = stack.pop()
        if nid in needed or nid not in prompt:
            continue
        needed.add(nid)
        for value in (prompt[nid].get("inputs") or {}).values():
            if is_link(value) and value[0] in prompt:
                stack.append(value[0])
    return needed


def _dependencies(node: dict, prompt: Prompt) -> list[str]:
    return sorted({v[0] for v in (node.get("inputs") or {}).values() if is_link(v) and v[0] in prompt},
                  key=_node_sort_key)


def _find_cycles(prompt: Prompt, nodes: set[str]) -> list[list[str]]:
    """Each cycle among ``nodes`` as a list of ids ``[a, b, ..., a]`` (iterative DFS, deterministic)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in nodes}
    cycles = []
    for start in sorted(nodes, key=_node_sort_key):
        if colour[start] != WHITE:
            continue
        path = [start]
        colour[start] = GREY
        iters = [iter(_dependencies(prompt[start], prompt))]
        while iters:
            advanced = False
            for dep in iters[-1]:
                if dep not in colour:
                    continue
                if colour[dep] == GREY:
                    cycle = path[path.index(dep):] + [dep]
                    cycles.append(list(reversed(cycle)))  # in data-flow direction
                    continue
                if colour[dep] == WHITE:
                    colour[dep] = GREY
                    path.append(dep)
                    iters.append(iter(_dependencies(prompt[dep], prompt)))
                    advanced = True
                    break
            if not advanced:
                colour[path.pop()] = BLACK
                iters.pop()
    return cycles


def _validate_inputs_params(cls: type) -> tuple[set[str], bool]:
    """Parameter names of ``VALIDATE_INPUTS`` and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(cls.VALIDATE_INPUTS)
    except (TypeError, ValueError):
        return set(), True
    names = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names, var_kw


def _check_node(nid: str, node: dict, cls: type, prompt: Prompt, node_classes: NodeClasses) -> list[str]:
    """Problems with one node whose class is known (message per problem, naming node and input)."""
    class_type = node["class_type"]
    where = f"node {nid} ({class_type})"
    problems = []
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        return [f"{where}: 'inputs' must be an object"]
    for flag in ("INPUT_IS_LIST",):
        if getattr(cls, flag, False):
            problems.append(f"{where}: the class sets {flag}, which the headless runner does not support")
    if any(getattr(cls, "OUTPUT_IS_LIST", ()) or ()):
        problems.append(f"{where}: the class sets OUTPUT_IS_LIST, which the headless runner does not support")
    function = getattr(cls, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(cls, function, None)):
        problems.append(f"{where}: the class has no method named by FUNCTION ({function!r}); the node pack is broken")

    custom_checked: set[str] = set()
    if hasattr(cls, "VALIDATE_INPUTS"):
        custom_checked, _ = _validate_inputs_params(cls)

    for name, type_, options, required in _declared_inputs(class_type, cls):
        kind = _widget_kind(type_, options)
        label = _type_label(type_)
        at = f"{where} input '{name}'"
        if name not in inputs:
            if not required:
                continue
            has_default, _ = _default_for(kind, type_, options)
            if has_default:
                continue
            if kind is None:
                problems.append(f"{at}: required input ({label}) is not connected; connect it to a node that outputs {label}")
            else:
                problems.append(f"{at}: required {label} value is missing and has no default; set it in the node")
            continue
        value = inputs[name]
        if is_link(value):
            src_id, index = value
            if src_id not in prompt:
                problems.append(f"{at}: is linked to node {src_id}, which does not exist in the workflow; reconnect it")
                continue
            src_type = prompt[src_id].get("class_type")
            if src_type not in node_classes:
                continue  # reported as an unknown type already
            outputs = _return_types(node_classes[src_type])
            if not 0 <= index < len(outputs):
                problems.append(
                    f"{at}: is linked to output {index} of node {src_id} ({src_type}), which has only "
                    f"{len(outputs)} output(s); reconnect it"
                )
                continue
            out_type = outputs[index]
            if not _types_compatible(out_type, type_):
                problems.append(
                    f"{at}: expects {label} but is linked to output {index} of node {src_id} ({src_type}) "
                    f"of type {_type_label(out_type)}; connect an output of type {label}"
                )
            continue
        # A literal value.
        if kind is None:
            if type_ != "*":
                problems.append(
                    f"{at}: expects a {label} connection from another node, got the value {value!r}; "
                    f"connect it to a node that outputs {label}"
                )
            continue
        if name in custom_checked:
            continue  # the class's VALIDATE_INPUTS checks this input itself (ComfyUI's rule)
        if kind == "COMBO":
            choices = _combo_choices(type_, options)
            if choices is not None and value not in choices:
                shown = ", ".join(repr(c) for c in choices[:20]) + (" ..." if len(choices) > 20 else "")
                problems.append(f"{at}: {value!r} is not one of the choices ({shown}); pick one of them")
            continue
        try:
            converted = _coerce_literal(kind, value)
        except (TypeError, ValueError) as e:
            problems.append(f"{at}: {e}; set a valid {label} value")
            continue
        if kind in ("INT", "FLOAT"):
            low, high = options.get("min"), options.get("max")
            allowed = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            if low is not None and converted < low:
                problems.append(f"{at}: {converted} is below the minimum {low}; use a value in {allowed}")
            elif high is not None and converted > high:
                problems.append(f"{at}: {converted} is above the maximum {high}; use a value in {allowed}")
    return problems


def _run_validate_inputs(nid: str, node: dict, cls: type, prompt: Prompt, node_classes: NodeClasses) -> str | None:
    """Call the class's ``VALIDATE_INPUTS`` with the node's literal values; return a problem or None.

    As in ComfyUI, connected inputs are not passed (their values do not exist yet); a parameter named
    ``input_types`` receives ``{input_name: upstream output type}`` for them.
    """
    class_type = node["class_type"]
    names, var_kw = _validate_inputs_params(cls)
    literal = _literal_kwargs(class_type, cls, node.get("inputs") or {})
    kwargs = {k: v for k, v in literal.items() if var_kw or k in names}
    if "input_types" in names:
        types = {}
        for name, value in (node.get("inputs") or {}).items():
            if is_link(value) and value[0] in prompt and prompt[value[0]].get("class_type") in node_classes:
                outs = _return_types(node_classes[prompt[value[0]]["class_type"]])
                if 0 <= value[1] < len(outs):
                    types[name] = outs[value[1]]
        kwargs["input_types"] = types
    try:
        verdict = cls.VALIDATE_INPUTS(**kwargs)
    except UserError as e:
        return f"node {nid} ({class_type}): {e}"
    except Exception as e:  # noqa: BLE001 - reported as a validation problem naming the node
        return f"node {nid} ({class_type}): VALIDATE_INPUTS raised {type(e).__name__}: {e}"
    if verdict is True:
        return None
    if verdict is False or verdict is None:
        return f"node {nid} ({class_type}): VALIDATE_INPUTS rejected the inputs"
    return f"node {nid} ({class_type}): {verdict}"


def validate_prompt(prompt: Prompt, node_classes: NodeClasses, outputs_wanted: Iterable | None = None) -> None:
    """Check an API-format prompt against the node classes; raise one ``UserError`` listing all problems.

    Checked for every node: the structure and that ``class_type`` is known (with close matches from
    ``difflib``). Checked for the nodes that would run (see ``execution_order``), as ComfyUI does:
    required inputs present (a widget with a default may be absent), links pointing at existing nodes
    and existing outputs, link types (output type vs. declared input type, when both are strings and
    neither is "*"), literal values for socket-only inputs, combo values among the choices, INT/FLOAT
    values convertible and within ``min``/``max``, BOOLEAN/STRING types, cycles, and the class's own
    ``VALIDATE_INPUTS`` (for nodes without other problems). Unknown extra input names are ignored, as
    in ComfyUI. Each message names the node id, its class and the input, and says how to fix it.
    """
    if not isinstance(prompt, dict) or not prompt:
        raise UserError("the workflow has no nodes; save a workflow with nodes from ComfyUI")
    problems: list[str] = []
    for nid in sorted(prompt, key=_node_sort_key):
        node = prompt[nid]
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(f"node {nid}: not a node object with a 'class_type'")
        elif node["class_type"] not in node_classes:
            problems.append(_unknown_type_message(nid, node["class_type"], node_classes))
    known = {nid: n for nid, n in prompt.items() if isinstance(n, dict) and n.get("class_type") in node_classes}

    if outputs_wanted is not None:
        outputs_wanted = [str(n) for n in outputs_wanted]
        for n in outputs_wanted:
            if n not in prompt:
                problems.append(f"requested output node {n} is not in the workflow; pick one of its node ids")
        # Wanted nodes of unknown type are reported above; their ancestry cannot be followed.
        outputs_wanted = [n for n in outputs_wanted if n in known]
    needed = _needed_nodes(known, node_classes, outputs_wanted) if known else set()
    for nid in sorted(needed, key=_node_sort_key):
        node = prompt[nid]
        cls = node_classes[node["class_type"]]
        node_problems = _check_node(nid, node, cls, prompt, node_classes)
        if not node_problems and hasattr(cls, "VALIDATE_INPUTS"):
            verdict = _run_validate_inputs(nid, node, cls, prompt, node_classes)
            if verdict:
                node_problems.append(verdict)
        problems.extend(node_problems)

    for cycle in _find_cycles(known, needed):
        parts = [f"node {cycle[0]} ({prompt[cycle[0]]['class_type']})"]
        for src, dst in zip(cycle, cycle[1:]):
            names = [k for k, v in prompt[dst]["inputs"].items() if is_link(v) and v[0] == src]
            parts.append(f"node {dst} ({prompt[dst]['class_type']}) input '{names[0]}'")
        problems.append(f"nodes form a cycle: {' -> '.join(parts)}; remove one of these links")

    if problems:
        header = f"the workflow has {len(problems)} problem{'s' if len(problems) != 1 else ''}:"
        raise UserError(header + "\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


def execution_order(prompt: Prompt, node_classes: NodeClasses, outputs_wanted: Iterable | None = None) -> list[str]:
    """Node ids that ``execute_prompt`` runs, in order: needed nodes only, topologically sorted.

    Among nodes whose inputs are all ready, the one with the smallest numeric id runs first, so the
    order depends only on the graph. Assumes a valid prompt (``validate_prompt``); a cycle raises
    ``UserError``.
    """
    needed = _needed_nodes(prompt, node_classes, outputs_wanted)
    deps = {nid: [d for d in _dependencies(prompt[nid], prompt) if d in needed] for nid in needed}
    consumers: dict[str, list[str]] = {nid: [] for nid in needed}
    for nid, ds in deps.items():
        for d in ds:
            consumers[d].append(nid)
    waiting = {nid: len(ds) for nid, ds in deps.items()}
    ready = [(_node_sort_key(nid), nid) for nid, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, nid = heapq.heappop(ready)
        order.append(nid)
        for consumer in consumers[nid]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, (_node_sort_key(consumer), consumer))
    if len(order) != len(needed):
        stuck = sorted(set(needed) - set(order), key=_node_sort_key)
        raise UserError(f"nodes {', '.join(stuck)} form or depend on a cycle; remove one of the links")
    return order


def _literal_kwargs(class_type: str, cls: type, inputs: dict) -> dict:
    """Literal (unconnected) input values, converted, with required widget defaults filled in."""
    kwargs = {}
    for name, type_, options, required in _declared_inputs(class_type, cls):
        kind = _widget_kind(type_, options)
        if name in inputs:
            value = inputs[name]
            if is_link(value):
                continue
            try:
                kwargs[name] = _coerce_literal(kind, value)
            except (TypeError, ValueError):
                kwargs[name] = value  # validation reports it
        elif required:
            has_default, default = _default_for(kind, type_, options)
            if has_default:
                kwargs[name] = default
    return kwargs


def _hidden_kwargs(class_type: str, cls: type, nid: str, prompt: Prompt) -> dict:
    """Values for the hidden inputs ComfyUI supplies that make sense headless."""
    kwargs = {}
    for name, spec in _class_inputs(class_type, cls)["hidden"].items():
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
        if kind == "UNIQUE_ID":
            kwargs[name] = nid
        elif kind == "PROMPT":
            kwargs[name] = prompt
        elif kind in ("EXTRA_PNGINFO", "DYNPROMPT"):
            kwargs[name] = None
    return kwargs


def _normalise_result(nid: str, class_type: str, raw: Any) -> tuple[tuple, Any]:
    """``(result_tuple, ui_or_None)`` from a FUNCTION's return value (tuple, list, dict or None)."""
    ui = None
    if isinstance(raw, dict):
        if "expand" in raw:
            raise NodeError(nid, class_type, "returned a node expansion ('expand'), which the headless runner does not support")
        ui = raw.get("ui")
        raw = raw.get("result", ())
    if raw is None:
        return (), ui
    if isinstance(raw, (tuple, list)):
        return tuple(raw), ui
    raise NodeError(
        nid, class_type,
        f"FUNCTION returned {type(raw).__name__}; it must return a tuple with one value per RETURN_TYPES "
        "entry, or a dict {'result': tuple, 'ui': {...}}",
    )


def execute_prompt(
    prompt: Prompt,
    node_classes: NodeClasses,
    on_node_start: Callable[[str, str], None] | None = None,
    outputs_wanted: Iterable | None = None,
) -> ExecutionResults:
    """Validate ``prompt`` and run the nodes it needs; return ``{node_id: result_tuple}``.

    ``on_node_start(node_id, class_type)`` is called just before each node runs (for progress
    lines). ``outputs_wanted`` (node ids) replaces the OUTPUT_NODE nodes as the targets. The result
    is an ``ExecutionResults`` dict of every node that ran, in run order; its ``.ui`` holds the ``ui``
    part of ComfyUI-style dict results.

    Raises ``UserError`` for validation problems (all listed at once), re-raises a node's own
    ``UserError`` unchanged, and wraps any other exception from a node (construction, FUNCTION) in
    ``NodeError`` chained to the original.
    """
    if outputs_wanted is not None:
        outputs_wanted = [str(n) for n in outputs_wanted]  # may be a one-shot iterable
    validate_prompt(prompt, node_classes, outputs_wanted)
    order = execution_order(prompt, node_classes, outputs_wanted)
    results = ExecutionResults()
    for nid in order:
        node = prompt[nid]
        class_type = node["class_type"]
        cls = node_classes[class_type]
        inputs = node.get("inputs") or {}
        if on_node_start is not None:
            on_node_start(nid, class_type)

        kwargs = _literal_kwargs(class_type, cls, inputs)
        declared = {name for name, _t, _o, _r in _declared_inputs(class_type, cls)}
        for name, value in inputs.items():
            if name not in declared or not is_link(value):
                continue
            src_id, index = value
            upstream = results[src_id]
            if index >= len(upstream):
                src_type = prompt[src_id]["class_type"]
                raise NodeError(
                    src_id, src_type,
                    f"it returned {len(upstream)} value(s) but node {nid} ({class_type}) input '{name}' "
                    f"needs output {index} (RETURN_TYPES {_return_types(node_classes[src_type])})",
                )
            kwargs[name] = upstream[index]
        kwargs.update(_hidden_kwargs(class_type, cls, nid, prompt))

        try:
            instance = cls()
            raw = getattr(instance, cls.FUNCTION)(**kwargs)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - wrapped with the node's id and class, cause chained
            raise NodeError(nid, class_type, f"{type(e).__name__}: {e}") from e
        result, ui = _normalise_result(nid, class_type, raw)
        results[nid] = result
        if ui is not None:
            results.ui[nid] = ui
    return results
