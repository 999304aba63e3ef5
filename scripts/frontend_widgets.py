"""The frontend's view of a node's inputs: which are widgets, in what order, with which extra values.

ComfyUI's frontend keeps widget values as a plain list in the order of a node's inputs (``input_order``
of /object_info), adds values for widgets of its own (the seed's "control after generate", the image
upload button) and, on newer hosts, nests the inputs a dynamic combo's chosen option adds. Both the
UI-file converter (scripts/workflows.py) and the workflow tests read a node through this model.
"""

from __future__ import annotations


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}  # the frontend adds a seed control to these even without the flag
UPLOAD_VALUE = "image"  # the value the image upload button serialises


class WorkflowError(ValueError):
    """A workflow does not fit the nodes this ComfyUI has; the message names the node and input."""


# --- the frontend's view of a node's inputs ---------------------------------------------------------

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # a combo whose chosen option adds inputs after it (0.33 and later)
MISSING = object()  # a widget the workflow does not give


def ordered_inputs(info: dict):
    """(name, spec, optional) for every visible input, in the order the frontend builds them."""
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            yield name, specs[name], section == "optional"


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def input_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def is_widget(spec) -> bool:
    return not _options(spec).get("forceInput") and input_type(spec) in WIDGET_TYPES | {DYNAMIC_COMBO}


def option_inputs(spec, key) -> list:
    """(name, spec, optional) of the inputs a dynamic combo adds after itself when ``key`` is chosen."""
    for option in _options(spec).get("options", []):
        if option["key"] == key:
            inputs = option.get("inputs", {})
            return [
                (n, s, section == "optional")
                for section in ("required", "optional")
                for n, s in inputs.get(section, {}).items()
            ]
    return []


class Slot:
    """One input as the frontend builds it: ``name`` as it queues it (``format.codec`` under a dynamic combo),
    ``plain`` as an older host named it, ``optional`` when a file may leave it to its default."""

    def __init__(self, name: str, spec, declared_optional: bool):
        self.name, self.spec, self.declared_optional = name, spec, declared_optional
        self.plain = name.rsplit(".", 1)[-1]
        self.optional = declared_optional or "." in name
        self.widget = is_widget(spec)


def slots(info: dict, value_of):
    """Every input of a node in the frontend's order; ``value_of(slot)`` gives a widget's value, and a dynamic
    combo's value picks the inputs that follow it. Yields (slot, value), the value None for sockets."""

    def walk(entries, prefix: str):
        for name, spec, optional in entries:
            slot = Slot(prefix + name, spec, optional)
            value = value_of(slot) if slot.widget else None
            yield slot, value
            if input_type(spec) == DYNAMIC_COMBO and isinstance(value, str):
                yield from walk(option_inputs(spec, value), slot.name + ".")

    yield from walk(ordered_inputs(info), "")


def extra_values(name: str, spec) -> list:
    """The values of widgets the frontend adds after this one (seed control, upload button)."""
    options, kind = _options(spec), input_type(spec)
    if kind == "INT" and options.get("control_after_generate", name in SEED_NAMES):
        return ["fixed"]
    if kind == "COMBO" and options.get("control_after_generate"):
        raise WorkflowError(f"input {name} is a combo with a value control, which this converter does not handle.")
    if kind == "COMBO" and options.get("image_upload"):
        return [UPLOAD_VALUE]
    return []


def default_value(spec):
    options = _options(spec)
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    if choices and input_type(spec) == DYNAMIC_COMBO:
        return choices[0]["key"]
    return choices[0] if choices else None


def twin_value(inputs: dict, used: set, slot: Slot):
    """The API twin's value for a widget: by the host's name, else by the plain name an older host used; each
    twin input is used once, so a legacy input the newer host keeps hidden takes its default."""
    for key in dict.fromkeys((slot.name, slot.plain)):
        if key in inputs and key not in used:
            used.add(key)
            return inputs[key]
    return MISSING


def node_info(object_info: dict, node_type: str, where: str) -> dict:
    if node_type not in object_info:
        raise WorkflowError(
            f"{where} has type {node_type}, which this ComfyUI does not have; install or register "
            "the node pack that provides it."
        )
    return object_info[node_type]


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
