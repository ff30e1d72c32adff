"""Tests for ``trainer.graph.workflow``: loading ComfyUI workflow files, validating and executing them.

The executor is generic over node classes, so these tests define small fake nodes in ComfyUI's
classic API (INPUT_TYPES / RETURN_TYPES / FUNCTION / OUTPUT_NODE / VALIDATE_INPUTS) instead of
loading the real (heavy) Flash-GRPO nodes.
"""

import json

import pytest

from trainer.errors import UserError
from trainer.graph.workflow import (
    ExecutionResults,
    NodeError,
    execute_prompt,
    execution_order,
    is_link,
    load_workflow,
    validate_prompt,
    workflow_to_prompt,
)

CALLS = []  # node ids in the order their FUNCTION ran (reset by the autouse fixture)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()
    yield
    CALLS.clear()


class IntConst:
    """An INT widget with control_after_generate: the UI saves [value, "randomize"]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"value": ("INT", {"default": 0, "min": -100, "max": 100, "control_after_generate": True})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, unique_id=None):
        CALLS.append(unique_id)
        return (value,)


class Seed:
    """An INT named ``seed``: the UI adds the control widget because of the name alone."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, seed, unique_id=None):
        CALLS.append(unique_id)
        return (seed,)


class Add:
    """a + b, times an optional scale; three INT/FLOAT widgets (a and b often connected)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "a": ("INT", {"default": 0, "min": -1000, "max": 1000}),
                "b": ("INT", {"default": 0, "min": -1000, "max": 1000}),
            },
            "optional": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("INT",)
    FUNCTION = "add"

    def add(self, a, b, scale=None, unique_id=None):
        CALLS.append(unique_id)
        total = a + b
        return (total if scale is None else total * scale,)


class Pick:
    """A combo widget plus a socket-only INT input (forceInput)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (["double", "negate"],),
                "value": ("INT", {"forceInput": True}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("INT",)
    FUNCTION = "pick"

    def pick(self, mode, value, unique_id=None):
        CALLS.append(unique_id)
        return (2 * value if mode == "double" else -value,)


class Collect:
    """Output node: records its input; returns a ComfyUI-style dict with ui and result."""

    SEEN = []

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"value": ("INT", {"forceInput": True})},
            "optional": {"label": ("STRING", {"default": ""})},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    RETURN_TYPES = ()
    FUNCTION = "collect"
    OUTPUT_NODE = True

    def collect(self, value, label="", unique_id=None, prompt=None):
        CALLS.append(unique_id)
        assert isinstance(prompt, dict)
        return {"ui": {"text": [f"{label}={value}"]}, "result": (value,)}


class MakeModel:
    RETURN_TYPES = ("FLASH_MODEL",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return ("model",)


class UseModel:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "use"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("FLASH_MODEL",)}}

    def use(self, model):
        return ()


class Boom:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "explode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    def explode(self, value):
        raise ValueError(f"cannot handle {value}")


class Polite:
    """Raises a UserError of its own: it must pass through unchanged."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        raise UserError("set FLASH_HOME to your models folder")


class Even:
    """VALIDATE_INPUTS rejects odd numbers (and replaces the built-in max check on ``n``)."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 0, "min": 0, "max": 4})}}

    @classmethod
    def VALIDATE_INPUTS(cls, n):
        return True if n % 2 == 0 else f"n must be even, got {n}"

    def run(self, n):
        return ()


NODES = {
    "IntConst": IntConst,
    "Seed": Seed,
    "Add": Add,
    "Pick": Pick,
    "Collect": Collect,
    "MakeModel": MakeModel,
    "UseModel": UseModel,
    "Boom": Boom,
    "Polite": Polite,
    "Even": Even,
}


def api_graph():
    """A hand-written API-format prompt: (2 + 3) * 2 -> doubled -> collected, plus an unused node."""
    return {
        "10": {"class_type": "Collect", "inputs": {"value": ["7", 0], "label": "out"}},
        "7": {"class_type": "Pick", "inputs": {"mode": "double", "value": ["3", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0], "scale": 2.0}},
        "2": {"class_type": "IntConst", "inputs": {"value": 3}},
        "1": {"class_type": "IntConst", "inputs": {"value": 2}},
        "99": {"class_type": "IntConst", "inputs": {"value": 50}},  # unused, not an output node
    }


# --------------------------------------------------------------------------------------------
# Execution (API format)
# --------------------------------------------------------------------------------------------


def test_api_execution_order_and_results():
    started = []
    results = execute_prompt(api_graph(), NODES, on_node_start=lambda nid, ct: started.append((nid, ct)))
    assert isinstance(results, ExecutionResults)
    assert started == [("1", "IntConst"), ("2", "IntConst"), ("3", "Add"), ("7", "Pick"), ("10", "Collect")]
    assert CALLS == ["1", "2", "3", "7", "10"]
    assert list(results) == ["1", "2", "3", "7", "10"]
    assert results["3"] == (10.0,)
    assert results["7"] == (20.0,)
    assert results["10"] == (20.0,)
    assert results.ui == {"10": {"text": ["out=20.0"]}}


def test_unused_non_output_nodes_are_not_executed():
    results = execute_prompt(api_graph(), NODES)
    assert "99" not in results
    assert "99" not in CALLS


def test_without_output_nodes_everything_runs_in_numeric_order():
    prompt = {
        "10": {"class_type": "IntConst", "inputs": {"value": 1}},
        "9": {"class_type": "IntConst", "inputs": {"value": 2}},
        "2": {"class_type": "Add", "inputs": {"a": ["10", 0], "b": ["9", 0]}},
    }
    assert execution_order(prompt, NODES) == ["9", "10", "2"]
    assert execute_prompt(prompt, NODES)["2"] == (3,)


def test_outputs_wanted_selects_targets():
    results = execute_prompt(api_graph(), NODES, outputs_wanted=["99"])
    assert list(results) == ["99"]


def test_defaults_fill_missing_widgets_and_absent_optionals_are_not_passed():
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": "4"}},  # b missing -> default 0; "4" -> int 4
        "2": {"class_type": "Collect", "inputs": {"value": ["1", 0]}},
    }
    results = execute_prompt(prompt, NODES)
    assert results["1"] == (4,)  # scale absent: not passed, so no float multiplication
    assert isinstance(results["1"][0], int)


def test_is_link_follows_comfyui_rule():
    assert is_link(["3", 0])
    assert not is_link([3, 0])
    assert not is_link(["3", "0"])
    assert not is_link(["a", "b", "c"])


# --------------------------------------------------------------------------------------------
# UI format
# --------------------------------------------------------------------------------------------


def ui_workflow():
    """A UI-format workflow as ComfyUI's front end saves it.

    1 IntConst(5, "randomize") --link1--> 7 Reroute --link2--> 3 Add.a
    2 Seed(42, "fixed") --link3--> 3 Add.b (converted widget input);  3.scale = 2.0 (widget)
    3 --link4--> 5 Collect(label "sum");  3 --link5--> 6 Collect (muted: dropped)
    8 PrimitiveNode(7, "fixed") --link6--> 9 Add.a;  1 --link7--> 9 Add.b;  9.scale = 1.5
      (node 9 saves values for its unconnected widgets only: the older / hand-written style)
    9 --link8--> 12 Pick (bypassed: passes 9 through) --link9--> 10 Collect(label "other")
    4 Note: dropped.
    """
    def int_widget(name, link):
        return {"name": name, "type": "INT", "widget": {"name": name}, "link": link}

    return {
        "last_node_id": 12,
        "last_link_id": 9,
        "nodes": [
            {"id": 1, "type": "IntConst", "mode": 0, "inputs": [int_widget("value", None)],
             "outputs": [{"name": "INT", "type": "INT", "links": [1, 7]}],
             "widgets_values": [5, "randomize"]},
            {"id": 2, "type": "Seed", "mode": 0, "inputs": [int_widget("seed", None)],
             "outputs": [{"name": "INT", "type": "INT", "links": [3]}],
             "widgets_values": [42, "fixed"]},
            {"id": 3, "type": "Add", "mode": 0,
             "inputs": [int_widget("a", 2), int_widget("b", 3),
                        {"name": "scale", "type": "FLOAT", "widget": {"name": "scale"}, "link": None}],
             "outputs": [{"name": "INT", "type": "INT", "links": [4, 5]}],
             "widgets_values": [0, 0, 2.0]},
            {"id": 4, "type": "Note", "mode": 0, "inputs": [], "outputs": [],
             "widgets_values": ["Adds two numbers."]},
            {"id": 5, "type": "Collect", "mode": 0,
             "inputs": [{"name": "value", "type": "INT", "link": 4},
                        {"name": "label", "type": "STRING", "widget": {"name": "label"}, "link": None}],
             "outputs": [], "widgets_values": ["sum"]},
            {"id": 6, "type": "Collect", "mode": 2,
             "inputs": [{"name": "value", "type": "INT", "link": 5}], "outputs": [],
             "widgets_values": ["muted"]},
            {"id": 7, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "INT", "links": [2]}], "properties": {"showOutputText": False}},
            {"id": 8, "type": "PrimitiveNode", "mode": 0, "inputs": [],
             "outputs": [{"name": "INT", "type": "INT", "links": [6], "widget": {"name": "a"}}],
             "widgets_values": [7, "fixed"]},
            {"id": 9, "type": "Add", "mode": 0,
             "inputs": [int_widget("a", 6), int_widget("b", 7)],
             "outputs": [{"name": "INT", "type": "INT", "links": [8]}],
             "widgets_values": [1.5]},
            {"id": 10, "type": "Collect", "mode": 0,
             "inputs": [{"name": "value", "type": "INT", "link": 9}], "outputs": [],
             "widgets_values": ["other"]},
            {"id": 12, "type": "Pick", "mode": 4,
             "inputs": [{"name": "value", "type": "INT", "link": 8}],
             "outputs": [{"name": "INT", "type": "INT", "links": [9]}],
             "widgets_values": ["negate"]},
        ],
        "links": [
            [1, 1, 0, 7, 0, "INT"],
            [2, 7, 0, 3, 0, "INT"],
            [3, 2, 0, 3, 1, "INT"],
            [4, 3, 0, 5, 0, "INT"],
            [5, 3, 0, 6, 0, "INT"],
            [6, 8, 0, 9, 0, "INT"],
            [7, 1, 0, 9, 1, "INT"],
            [8, 9, 0, 12, 0, "INT"],
            [9, 12, 0, 10, 0, "INT"],
        ],
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
    }


EXPECTED_FROM_UI = {
    "1": {"class_type": "IntConst", "inputs": {"value": 5}},
    "2": {"class_type": "Seed", "inputs": {"seed": 42}},
    "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0], "scale": 2.0}},
    "5": {"class_type": "Collect", "inputs": {"value": ["3", 0], "label": "sum"}},
    "9": {"class_type": "Add", "inputs": {"a": 7, "b": ["1", 0], "scale": 1.5}},
    "10": {"class_type": "Collect", "inputs": {"value": ["9", 0], "label": "other"}},
}


def test_ui_format_converts_to_the_hand_written_api_form(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(ui_workflow(), indent=2))
    assert load_workflow(path, NODES) == EXPECTED_FROM_UI


def test_ui_format_runs():
    results = execute_prompt(workflow_to_prompt(ui_workflow(), NODES), NODES)
    assert results["3"] == (94.0,)  # (5 + 42) * 2.0
    assert results["10"] == (18.0,)  # (7 + 5) * 1.5, the bypassed Pick passed through
    assert results.ui["5"] == {"text": ["sum=94.0"]}


def test_ui_links_in_object_form_and_seed_without_control_value():
    wf = ui_workflow()
    wf["links"] = [
        {"id": ln[0], "origin_id": ln[1], "origin_slot": ln[2], "target_id": ln[3], "target_slot": ln[4], "type": ln[5]}
        for ln in wf["links"]
    ]
    wf["nodes"][1]["widgets_values"] = [42]  # some files omit the control mode
    assert workflow_to_prompt(wf, NODES) == EXPECTED_FROM_UI


def test_api_file_and_post_body_are_accepted(tmp_path):
    path = tmp_path / "api.json"
    graph = api_graph()
    graph["1"]["_meta"] = {"title": "two"}
    path.write_text(json.dumps({"prompt": graph, "client_id": "x"}))
    loaded = load_workflow(path, NODES)
    assert loaded["1"] == {"class_type": "IntConst", "inputs": {"value": 2}}
    assert loaded["3"]["inputs"]["a"] == ["1", 0]


def test_ui_unknown_type_and_subgraph_are_reported():
    wf = ui_workflow()
    wf["nodes"][0]["type"] = "IntConts"
    wf["nodes"].append({"id": 20, "type": "0b1c-uuid", "mode": 0, "inputs": [], "outputs": []})
    wf["definitions"] = {"subgraphs": [{"id": "0b1c-uuid", "name": "My group"}]}
    with pytest.raises(UserError) as info:
        workflow_to_prompt(wf, NODES)
    msg = str(info.value)
    assert "node 1" in msg and "'IntConts'" in msg and "'IntConst'" in msg
    assert "node 20 is a subgraph ('My group')" in msg and "Unpack Subgraph" in msg


def test_load_errors_missing_file_and_bad_json(tmp_path):
    with pytest.raises(UserError, match="workflow file not found"):
        load_workflow(tmp_path / "nope.json", NODES)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "1": {"class_type": "IntConst",\n  }\n}')
    with pytest.raises(UserError, match=r"not valid JSON: .* line 3 column 3"):
        load_workflow(bad, NODES)
    odd = tmp_path / "odd.json"
    odd.write_text("[1, 2]")
    with pytest.raises(UserError, match="neither a ComfyUI UI-format workflow"):
        load_workflow(odd, NODES)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def problems_of(prompt, **kw):
    with pytest.raises(UserError) as info:
        validate_prompt(prompt, NODES, **kw)
    return str(info.value)


def test_validation_reports_all_problems_together():
    prompt = {
        "1": {"class_type": "IntConts", "inputs": {"value": 1}},
        "2": {"class_type": "IntConst", "inputs": {"value": 500}},
        "3": {"class_type": "Pick", "inputs": {"mode": "triple", "value": ["2", 0]}},
        "4": {"class_type": "Collect", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Collect", "inputs": {}},
        "6": {"class_type": "Collect", "inputs": {"value": ["42", 0]}},
        "7": {"class_type": "Collect", "inputs": {"value": ["2", 3]}},
    }
    msg = problems_of(prompt)
    assert "the workflow has 6 problems" in msg
    assert "node 1: unknown node type 'IntConts'; did you mean 'IntConst'?" in msg
    assert "node 2 (IntConst) input 'value': 500 is above the maximum 100" in msg
    assert "node 3 (Pick) input 'mode': 'triple' is not one of the choices ('double', 'negate')" in msg
    assert "node 5 (Collect) input 'value': required input (INT) is not connected" in msg
    assert "node 6 (Collect) input 'value': is linked to node 42, which does not exist" in msg
    assert "node 7 (Collect) input 'value': is linked to output 3 of node 2 (IntConst), which has only 1 output" in msg


def test_validation_type_mismatch_and_literal_for_socket():
    prompt = {
        "1": {"class_type": "IntConst", "inputs": {"value": 1}},
        "2": {"class_type": "UseModel", "inputs": {"model": ["1", 0]}},
        "3": {"class_type": "UseModel", "inputs": {"model": "my_model"}},
        "4": {"class_type": "Add", "inputs": {"a": "four", "b": True}},
    }
    msg = problems_of(prompt, outputs_wanted=["2", "3", "4"])
    assert "node 2 (UseModel) input 'model': expects FLASH_MODEL but is linked to output 0 of node 1 (IntConst) of type INT" in msg
    assert "node 3 (UseModel) input 'model': expects a FLASH_MODEL connection" in msg
    assert "node 4 (Add) input 'a':" in msg and "node 4 (Add) input 'b':" in msg


def test_validation_cycle():
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}},
    }
    msg = problems_of(prompt)
    assert "nodes form a cycle: node 1 (Add) -> node 2 (Add) input 'a' -> node 1 (Add) input 'a'" in msg


def test_validation_checks_only_needed_nodes_but_all_types():
    prompt = api_graph()
    prompt["99"]["inputs"]["value"] = 1000  # out of range, but node 99 never runs
    validate_prompt(prompt, NODES)
    prompt["98"] = {"class_type": "Nope", "inputs": {}}
    assert "node 98: unknown node type 'Nope'" in problems_of(prompt)


def test_validate_inputs_hook():
    assert "node 1 (Even): n must be even, got 3" in problems_of({"1": {"class_type": "Even", "inputs": {"n": 3}}})
    # VALIDATE_INPUTS names `n`, so the built-in max=4 check is skipped for it (ComfyUI's rule).
    validate_prompt({"1": {"class_type": "Even", "inputs": {"n": 6}}}, NODES)


def test_requested_output_must_exist():
    assert "requested output node 77 is not in the workflow" in problems_of(api_graph(), outputs_wanted=["77"])


# --------------------------------------------------------------------------------------------
# Node failures
# --------------------------------------------------------------------------------------------


def test_node_exception_becomes_node_error_with_cause():
    prompt = {
        "1": {"class_type": "IntConst", "inputs": {"value": 3}},
        "5": {"class_type": "Boom", "inputs": {"value": ["1", 0]}},
    }
    with pytest.raises(NodeError) as info:
        execute_prompt(prompt, NODES)
    err = info.value
    assert isinstance(err, UserError)
    assert err.node_id == "5" and err.class_type == "Boom"
    assert "node 5 (Boom) failed: ValueError: cannot handle 3" in str(err)
    assert isinstance(err.__cause__, ValueError)


def test_node_user_error_propagates_unchanged():
    with pytest.raises(UserError) as info:
        execute_prompt({"1": {"class_type": "Polite", "inputs": {}}}, NODES)
    assert type(info.value) is UserError
    assert str(info.value) == "set FLASH_HOME to your models folder"


def test_custom_types_flow_between_nodes():
    prompt = {
        "1": {"class_type": "MakeModel", "inputs": {}},
        "2": {"class_type": "UseModel", "inputs": {"model": ["1", 0]}},
    }
    assert execute_prompt(prompt, NODES)["1"] == ("model",)
