"""The ``pii-redact`` plugin: redacts e-mail addresses, phone numbers and Luhn-checked card numbers
in every string of an event's data, as processor kind ``pii-redact`` and as step ``pii-redact``.

Processor options (and the operator's FLEXCORE_PLUGIN_CONFIG, the step's defaults):
``{"detectors": ["card", "email", "phone"], "replacement": "[REDACTED]"}``; ``{detector}`` in the
replacement is replaced by the detector's name (``"<{detector}>"`` gives ``<email>``).
"""
from __future__ import annotations

from typing import Any, Dict, List

from flexcore_plugin import Context, PluginInputError, define_plugin, serve
from redact import OptionsError, parse_options, redact


def process(req: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """One ``Redacted`` output per input, with the input's data redacted. Stateless and deterministic."""
    try:
        options = parse_options(req.get("options"))
    except OptionsError as err:
        raise PluginInputError(str(err)) from None
    outputs: List[Dict[str, Any]] = []
    for i, item in enumerate(req["inputs"]):
        try:
            data, _ = redact(item.get("data"), options)
        except ValueError as err:
            raise PluginInputError(f"inputs[{i}].data: {err}") from None
        outputs.append({"input": i, "type": "Redacted", "data": data})
    return {"states": {}, "outputs": outputs}


def step(req: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """The step's output is its input redacted, with the operator's options."""
    try:
        options = parse_options(dict(ctx.config), "FLEXCORE_PLUGIN_CONFIG")
        output, _ = redact(req.get("input"), options)
    except ValueError as err:
        raise PluginInputError(str(err)) from None
    return {"output": output}


plugin = define_plugin(
    name="pii-redact",
    version="1.0.0",
    description="Redacts e-mail addresses, phone numbers and Luhn-checked card numbers in every string of an event's data.",
    protocols=(1,),
    processors={"pii-redact": process},
    steps={"pii-redact": step},
)

if __name__ == "__main__":
    serve(plugin)
