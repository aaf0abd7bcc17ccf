"""The Python ``echo-py`` plugin: the conformance and benchmark fixture, twin of plugins/echo/plugin.ts.

Every capability is named ``echo`` and answers exactly as the TypeScript echo does. Fault switches
come from the operator's config (FLEXCORE_PLUGIN_CONFIG), all off by default:
``crashAfter`` (exit 1 on the call after N calls), ``hang``, ``malformed`` (not JSON), ``oversized``
(+ ``oversizedBytes``, default 256 KiB), ``ignoreSigterm``, ``stdoutSpam`` (true = 100 lines of
1 KiB per call, or a number of lines), ``reject`` (400 on every call), ``fail`` (500 on every
call), ``delayMs``, and ``sourceEnd`` (where the echo source ends, default 1000).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from flexcore_plugin import Context, PluginInputError, define_plugin, serve, write_stderr

NOT_JSON = b"{not json"
calls = 0


async def faults(ctx: Context) -> Optional[bytes]:
    """Applies the fault switches; returns a raw reply to send instead, if any."""
    global calls
    f = ctx.config
    calls += 1
    crash_after = f.get("crashAfter")
    if isinstance(crash_after, int) and not isinstance(crash_after, bool) and calls > crash_after:
        ctx.log.error("crashAfter reached: exiting", calls=calls)
        os._exit(1)
    spam = f.get("stdoutSpam")
    if spam:
        sys.stdout.write(("x" * 1023 + "\n") * (100 if spam is True else int(spam)))
        sys.stdout.flush()
    if f.get("hang"):
        await asyncio.Event().wait()
    delay = f.get("delayMs")
    if isinstance(delay, (int, float)) and delay > 0:
        await asyncio.sleep(delay / 1000)
    if f.get("reject"):
        raise PluginInputError("echo: rejected by the `reject` fault switch")
    if f.get("fail"):
        raise RuntimeError("echo: failed by the `fail` fault switch")
    if f.get("malformed"):
        return NOT_JSON
    if f.get("oversized"):
        size = f.get("oversizedBytes") if isinstance(f.get("oversizedBytes"), int) else 256 * 1024
        return json.dumps({"output": "x" * size}).encode()
    return None


async def process(req: Dict[str, Any], ctx: Context) -> Any:
    """One ``Echoed`` output per input with the input's data; state ``{count}`` per key."""
    raw = await faults(ctx)
    if raw is not None:
        return raw
    counts: Dict[str, int] = {}
    outputs: List[Dict[str, Any]] = []
    for i, item in enumerate(req["inputs"]):
        key = item["key"]
        if key not in counts:
            state = req["states"].get(key)
            counts[key] = state.get("count", 0) if isinstance(state, dict) else 0
        counts[key] += 1
        data = item["data"]
        if ctx.config.get("servedBy") is True and isinstance(data, dict):
            # Not a fault: which instance served it (FLEXCORE_PLUGIN_NAME / FLEXCORE_PLUGIN_TENANT).
            data = {**data, "servedBy": {"service": os.environ.get("FLEXCORE_PLUGIN_NAME"), "tenant": os.environ.get("FLEXCORE_PLUGIN_TENANT")}}
        outputs.append({"input": i, "type": "Echoed", "data": data})
    return {"states": {k: {"count": n} for k, n in counts.items()}, "outputs": outputs}


async def run(req: Dict[str, Any], ctx: Context) -> Any:
    """The step: output = input."""
    return await faults(ctx) or {"output": req["input"]}


async def deliver(req: Dict[str, Any], ctx: Context) -> Any:
    """The sink: accepts every event."""
    return await faults(ctx) or {"delivered": len(req["events"])}


async def read(req: Dict[str, Any], ctx: Context) -> Any:
    """The source: the numbers after the cursor, up to ``sourceEnd``."""
    raw = await faults(ctx)
    if raw is not None:
        return raw
    end = ctx.config.get("sourceEnd", 1000)
    cursor = req.get("cursor")
    if cursor is not None and not (isinstance(cursor, str) and cursor.isdigit()):
        raise PluginInputError(f"expected `cursor` to be null or a whole number, got {json.dumps(cursor)}")
    start = int(cursor or 0)
    records = [{"id": f"echo-{n}", "key": "echo", "type": "Number", "data": {"n": n}} for n in range(start + 1, min(end, start + req["max"]) + 1)]
    return {"records": records, "cursor": str(start + len(records))}


plugin = define_plugin(
    name="echo-py",
    version="1.0.0",
    description="Echoes what it is given: the conformance and benchmark fixture, with fault switches.",
    protocols=(1,),
    processors={"echo": process},
    steps={"echo": run},
    sinks={"echo": deliver},
    sources={"echo": read},
)

if __name__ == "__main__":
    try:
        ignore = json.loads(os.environ.get("FLEXCORE_PLUGIN_CONFIG") or "{}").get("ignoreSigterm") is True
    except (ValueError, AttributeError):
        ignore = False  # serve() reports a bad FLEXCORE_PLUGIN_CONFIG and exits 78
    if ignore:
        # write_stderr, not sys.stderr.write: the handler may run inside the SDK's own stderr write.
        signal.signal(signal.SIGTERM, lambda *_: write_stderr('{"level":40,"msg":"echo-py: ignoring SIGTERM (fault switch)"}\n'))
    serve(plugin, handle_signals=not ignore)
