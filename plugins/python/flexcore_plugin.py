"""FlexCore plugin SDK for Python, standard library only (asyncio). Copy this file into your bundle.

It speaks the small part of the NATS client protocol a plugin needs (CONNECT with user and
password, PING/PONG, SUB with a queue group, UNSUB, MSG/HMSG, PUB/HPUB for replies), the NATS
services protocol as ``plugins/service.ts`` implements it ($SRV.PING|INFO|STATS, endpoints in
queue group ``q``, ``Nats-Service-Error`` headers, stats), FlexCore's handshake environment and
plugin protocol 1. See docs/plugins.md, "Writing a plugin in Python".

    plugin = define_plugin(version="1.0.0", description="...", steps={"upper": lambda req, ctx: {"output": req["input"].upper()}})
    serve(plugin)

There is no reconnect: when the connection is lost the process exits 1 and the supervisor
restarts it (state lives in the host, so nothing is lost).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["PluginInputError", "Context", "Logger", "write_stderr", "Plugin", "define_plugin", "serve", "read_handshake"]

SUPPORTED_PROTOCOLS: Tuple[int, ...] = (1,)
EXIT_CONFIG = 78  # EX_CONFIG: protocol mismatch or unusable environment; never restarted
QUEUE_GROUP = "q"
DEFAULT_CONCURRENCY = 64
KINDS = (("processor", "processors"), ("step", "steps"), ("sink", "sinks"), ("source", "sources"))
TYPES = {verb: f"io.nats.micro.v1.{verb.lower()}_response" for verb in ("PING", "INFO", "STATS")}
PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9-]{1,39}(_[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CAPABILITY = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
LEVELS = {"trace": 10, "debug": 20, "info": 30, "warn": 40, "error": 50, "fatal": 60}
Handler = Callable[[Dict[str, Any], "Context"], Any]


class PluginInputError(Exception):
    """Raise from a handler when the input is bad: the host dead-letters it (status 4xx, default 400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status if 400 <= status < 500 else 400


def write_stderr(text: str) -> None:
    """Writes to fd 2 with plain write(2) calls, not through ``sys.stderr``: a signal handler that
    logs while the main code is inside a buffered stderr write would otherwise raise "reentrant
    call" into whatever the main code was doing (and kill the task it lands in)."""
    data = text.encode()
    while data:
        data = data[os.write(2, data):]


class Logger:
    """JSON lines on stderr with pino's numeric levels, so FlexCore forwards them like a TypeScript plugin's."""

    def __init__(self, level: str = "info", **base: Any) -> None:
        self.threshold = LEVELS.get(level, 30)
        self.base = {"pid": os.getpid(), **base}

    def child(self, **fields: Any) -> "Logger":
        log = Logger()
        log.threshold, log.base = self.threshold, {**self.base, **fields}
        return log

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        err = fields.pop("err", None)
        if isinstance(err, BaseException):
            fields["err"] = {"type": type(err).__name__, "message": str(err), "stack": "".join(traceback.format_exception(err))}
        line = {"level": LEVELS[level], "time": int(time.time() * 1000), **self.base, **fields, "msg": msg}
        write_stderr(json.dumps(line, default=str, separators=(",", ":")) + "\n")

    def debug(self, msg: str, **f: Any) -> None: self.log("debug", msg, **f)
    def info(self, msg: str, **f: Any) -> None: self.log("info", msg, **f)
    def warn(self, msg: str, **f: Any) -> None: self.log("warn", msg, **f)
    def error(self, msg: str, **f: Any) -> None: self.log("error", msg, **f)
    def fatal(self, msg: str, **f: Any) -> None: self.log("fatal", msg, **f)


@dataclass(frozen=True)
class Context:
    """What a handler gets beside the request: the operator's options and the logger."""

    config: Mapping[str, Any]
    log: Logger


@dataclass(frozen=True)
class Plugin:
    """A checked plugin definition; ``capabilities`` is a list of (kind, name, handler)."""

    name: Optional[str]
    version: str
    description: str
    protocols: Tuple[int, ...]
    capabilities: Tuple[Tuple[str, str, Handler], ...]


def define_plugin(*, version: str, description: str, protocols: Tuple[int, ...] = (1,), name: Optional[str] = None,
                  processors: Optional[Dict[str, Handler]] = None, steps: Optional[Dict[str, Handler]] = None,
                  sinks: Optional[Dict[str, Handler]] = None, sources: Optional[Dict[str, Handler]] = None) -> Plugin:
    """Checks names, version, protocols and handlers. A handler is ``f(request, context)``, sync or async,
    returning the reply (a dict, or bytes sent as they are). Raises ValueError naming the field."""
    if name is not None and not PLUGIN_NAME.match(name):
        raise ValueError(f"expected `name` to match {PLUGIN_NAME.pattern}, got {name!r}")
    if not isinstance(version, str) or not SEMVER.match(version):
        raise ValueError(f"expected `version` to be a semantic version such as 1.0.0, got {version!r}")
    if not protocols or not all(isinstance(p, int) and p > 0 for p in protocols):
        raise ValueError(f"expected `protocols` to be a non-empty list of protocol versions, got {protocols!r}")
    groups = {"processors": processors, "steps": steps, "sinks": sinks, "sources": sources}
    caps: List[Tuple[str, str, Handler]] = []
    for kind, group in KINDS:
        for cap, handler in (groups[group] or {}).items():
            if not CAPABILITY.match(cap):
                raise ValueError(f"expected `{group}.{cap}` to be named like {CAPABILITY.pattern}")
            if not callable(handler):
                raise ValueError(f"expected `{group}.{cap}` to be a function, got {handler!r}")
            caps.append((kind, cap, handler))
    if not caps:
        raise ValueError("expected at least one processor, step, sink or source")
    return Plugin(name, version, description, tuple(protocols), tuple(caps))


@dataclass(frozen=True)
class Handshake:
    """The handshake environment, checked."""

    name: str
    servers: Tuple[str, ...]
    user: Optional[str]
    password: Optional[str]
    host_protocols: Tuple[int, ...]
    concurrency: int
    nonce: Optional[str]
    config: Mapping[str, Any]
    tenant: Optional[str] = None  # FLEXCORE_PLUGIN_TENANT: the one tenant a tenancy: tenant instance serves


def read_handshake(env: Mapping[str, str], plugin: Plugin) -> Handshake:
    """Reads FLEXCORE_PLUGIN_*; raises ValueError naming the variable, the value and what was expected."""
    def bad(var: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"expected `{var}` to be {expected}, got {value!r}")

    name = env.get("FLEXCORE_PLUGIN_NAME") or plugin.name
    if not name or not PLUGIN_NAME.match(name):
        raise bad("FLEXCORE_PLUGIN_NAME", name, f"a plugin name matching {PLUGIN_NAME.pattern}")
    url = env.get("FLEXCORE_PLUGIN_NATS_URL") or env.get("NATS_URL") or ""
    servers = tuple(u.strip() for u in url.split(",") if u.strip())
    if not servers or not all(urlsplit(s if "://" in s else f"nats://{s}").port for s in servers):
        raise bad("FLEXCORE_PLUGIN_NATS_URL", url, "a comma-separated list of nats://host:port URLs")
    text = env.get("FLEXCORE_PLUGIN_PROTOCOLS", "1")
    try:
        protocols = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        protocols = ()
    if not protocols or any(p < 1 for p in protocols):
        raise bad("FLEXCORE_PLUGIN_PROTOCOLS", text, "a comma-separated list of protocol versions, e.g. 1")
    text = env.get("FLEXCORE_PLUGIN_CONCURRENCY") or str(DEFAULT_CONCURRENCY)
    if not text.isdigit() or int(text) < 1:
        raise bad("FLEXCORE_PLUGIN_CONCURRENCY", text, "an integer from 1 and up")
    concurrency = int(text)
    text = env.get("FLEXCORE_PLUGIN_CONFIG") or "{}"
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise bad("FLEXCORE_PLUGIN_CONFIG", text, "a JSON object")
    tenant = env.get("FLEXCORE_PLUGIN_TENANT") or None
    if tenant is not None and (not TENANT.match(tenant) or name != f"{name.split('_', 1)[0]}_{tenant}"):
        raise bad("FLEXCORE_PLUGIN_TENANT", tenant, f"the tenant of the service name {name!r} (<name>_<tenant>)")
    return Handshake(name, servers, env.get("FLEXCORE_PLUGIN_NATS_USER") or None, env.get("FLEXCORE_PLUGIN_NATS_PASSWORD") or None,
                     protocols, concurrency, env.get("FLEXCORE_PLUGIN_NONCE") or None, MappingProxyType(config), tenant)


Callback = Callable[[str, Optional[str], Dict[str, str], bytes], None]


class Connection:
    """The NATS client protocol subset: one server connection, subscriptions, replies, flush."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: Dict[str, Any]) -> None:
        self.reader, self.writer, self.info = reader, writer, info
        self.max_payload = int(info.get("max_payload", 1024 * 1024))
        self.subs: Dict[int, Callback] = {}
        self.next_sid = 0
        self.pongs: List[asyncio.Future[None]] = []
        self.closing = False

    @classmethod
    async def connect(cls, servers: Tuple[str, ...], user: Optional[str], password: Optional[str], name: str) -> "Connection":
        """Tries each server in turn; CONNECT, then PING, and waits for PONG (or the server's -ERR)."""
        errors = []
        for server in servers:
            url = urlsplit(server if "://" in server else f"nats://{server}")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port, limit=1 << 20), 5)
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                if not line.startswith(b"INFO "):
                    raise ConnectionError(f"expected INFO, got {line[:80]!r}")
                info = json.loads(line[5:])
                if info.get("tls_required"):
                    raise ConnectionError("the server requires TLS, which this client does not speak")
                connect = {"verbose": False, "pedantic": False, "lang": "python-flexcore", "version": "1.0.0", "protocol": 1,
                           "headers": True, "no_responders": True, "name": name,
                           "user": user or url.username, "pass": password or url.password}
                writer.write(b"CONNECT " + json.dumps({k: v for k, v in connect.items() if v is not None}).encode() + b"\r\nPING\r\n")
                while True:
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                    if line.startswith(b"PONG"):
                        return cls(reader, writer, info)
                    if line.startswith(b"-ERR"):
                        raise ConnectionError(line[5:].strip().decode(errors="replace"))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
                errors.append(f"{server}: {err or type(err).__name__}")
        raise ConnectionError("; ".join(errors))

    def subscribe(self, subject: str, callback: Callback, queue: str = "") -> int:
        self.next_sid += 1
        self.subs[self.next_sid] = callback
        self.writer.write(f"SUB {subject} {queue} {self.next_sid}\r\n".replace("  ", " ").encode())
        return self.next_sid

    def unsubscribe(self, sid: int) -> None:
        self.writer.write(f"UNSUB {sid}\r\n".encode())

    def publish(self, subject: str, payload: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        """PUB, or HPUB with headers. Raises ValueError over the server's max_payload (it would close us)."""
        head = b""
        if headers:
            head = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        if len(head) + len(payload) > self.max_payload:
            raise ValueError(f"a reply of {len(head) + len(payload)} bytes exceeds the server's max_payload of {self.max_payload}")
        if head:
            self.writer.write(f"HPUB {subject} {len(head)} {len(head) + len(payload)}\r\n".encode() + head + payload + b"\r\n")
        else:
            self.writer.write(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\n")

    async def flush(self) -> None:
        """Round trip to the server: everything written before has been processed."""
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pongs.append(pong)
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        await pong

    async def read_loop(self) -> None:
        """Reads until the connection ends; returns normally only after close()."""
        reader = self.reader
        while True:
            line = await reader.readuntil(b"\r\n")
            op = line[:4].upper()
            if op == b"MSG ":
                args = line[4:-2].split()
                payload = (await reader.readexactly(int(args[-1]) + 2))[:-2]
                self._deliver(args, {}, payload)
            elif op == b"HMSG":
                args = line[5:-2].split()
                body = (await reader.readexactly(int(args[-1]) + 2))[:-2]
                size = int(args[-2])
                self._deliver(args[:-1], parse_headers(body[:size]), body[size:])
            elif op == b"PING":
                self.writer.write(b"PONG\r\n")
            elif op == b"PONG":
                if self.pongs:
                    self.pongs.pop(0).set_result(None)
            elif op == b"INFO":
                self.info.update(json.loads(line[5:]))
            elif op == b"-ERR":
                text = line[5:-2].decode(errors="replace")
                raise ServerWarning(text) if "Permissions Violation" in text else ConnectionError(text)

    def _deliver(self, args: List[bytes], headers: Dict[str, str], payload: bytes) -> None:
        callback = self.subs.get(int(args[1]))
        if callback is not None:
            callback(args[0].decode(), args[2].decode() if len(args) > 3 else None, headers, payload)

    def close(self) -> None:
        self.closing = True
        self.writer.close()


class ServerWarning(Exception):
    """A non-fatal -ERR (a permissions violation): logged, the connection stays."""


def parse_headers(block: bytes) -> Dict[str, str]:
    """``NATS/1.0 [status]\\r\\nKey: Value\\r\\n...`` → dict (the status line, if any, as ``Status``)."""
    lines = block.decode(errors="replace").split("\r\n")
    out: Dict[str, str] = {}
    status = lines[0][8:].strip() if lines and lines[0].startswith("NATS/1.0") else ""
    if status:
        out["Status"] = status
    for entry in lines[1:]:
        key, sep, value = entry.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class Endpoint:
    """One capability's endpoint and its stats."""

    def __init__(self, kind: str, cap: str, service: str, handler: Handler) -> None:
        self.kind, self.cap, self.handler = kind, cap, handler
        self.name, self.subject = f"{kind}-{cap}", f"flexplugin.{service}.{kind}.{cap}"
        self.sid = 0
        self.num_requests = self.num_errors = self.processing_ns = 0
        self.last_error = ""

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": QUEUE_GROUP, "metadata": {"kind": self.kind, "capability": self.cap}}

    def stats(self) -> Dict[str, Any]:
        avg = round(self.processing_ns / self.num_requests) if self.num_requests else 0
        return {"name": self.name, "subject": self.subject, "queue_group": QUEUE_GROUP, "num_requests": self.num_requests,
                "num_errors": self.num_errors, "last_error": self.last_error, "processing_time": self.processing_ns,
                "average_processing_time": avg, "data": None}


class Service:
    """A services-protocol instance: control subjects, endpoints, the in-flight bound, the drain."""

    def __init__(self, nc: Connection, plugin: Plugin, hs: Handshake, protocol: int, log: Logger) -> None:
        self.nc, self.plugin, self.protocol, self.log = nc, plugin, protocol, log
        self.id = "".join(secrets.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(22))
        self.name = hs.name
        self.metadata = {"flexcore.protocol": str(protocol), **({"flexcore.nonce": hs.nonce} if hs.nonce else {})}
        self.started = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.context = Context(hs.config, log)
        self.tenant = hs.tenant
        self.slots = asyncio.Semaphore(hs.concurrency)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.endpoints = [Endpoint(kind, cap, hs.name, handler) for kind, cap, handler in plugin.capabilities]
        self.control: List[int] = []

    def start(self) -> None:
        for verb in ("PING", "INFO", "STATS"):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{self.name}", f"$SRV.{verb}.{self.name}.{self.id}"):
                self.control.append(self.nc.subscribe(subject, lambda _s, reply, _h, _p, verb=verb: self.answer_control(verb, reply)))
        for ep in self.endpoints:
            ep.sid = self.nc.subscribe(ep.subject, lambda _s, reply, _h, payload, ep=ep: self.accept(ep, reply, payload), QUEUE_GROUP)

    def identity(self, verb: str) -> Dict[str, Any]:
        return {"type": TYPES[verb], "name": self.name, "id": self.id, "version": self.plugin.version, "metadata": self.metadata}

    def answer_control(self, verb: str, reply: Optional[str]) -> None:
        if not reply:
            return
        body = self.identity(verb)
        if verb == "INFO":
            body.update(description=self.plugin.description, endpoints=[e.info() for e in self.endpoints])
        elif verb == "STATS":
            body.update(started=self.started, endpoints=[e.stats() for e in self.endpoints])
        self.nc.publish(reply, json.dumps(body).encode())

    def accept(self, ep: Endpoint, reply: Optional[str], payload: bytes) -> None:
        ep.num_requests += 1
        self.in_flight += 1
        self.idle.clear()
        task = asyncio.get_running_loop().create_task(self.handle(ep, reply, payload, time.perf_counter_ns()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, ep: Endpoint, reply: Optional[str], payload: bytes, start: int) -> None:
        try:
            async with self.slots:
                try:
                    body = await self.call(ep, payload)
                    if reply:
                        self.nc.publish(reply, body)
                except Exception as err:  # noqa: BLE001 - every failure becomes an error reply
                    status = err.status if isinstance(err, PluginInputError) else 500
                    if status == 500:
                        self.log.error("handler failed", err=err, endpoint=f"{ep.kind}.{ep.cap}")
                    message = " ".join(str(err).split())[:1024] or type(err).__name__
                    ep.num_errors += 1
                    ep.last_error = f"{status}:{message}"
                    if reply:
                        self.nc.publish(reply, b"", {"Nats-Service-Error": message, "Nats-Service-Error-Code": str(status)})
        finally:
            ep.processing_ns += time.perf_counter_ns() - start
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def call(self, ep: Endpoint, payload: bytes) -> bytes:
        try:
            request = json.loads(payload)
        except (ValueError, RecursionError):
            raise PluginInputError("the request is not JSON") from None
        if not isinstance(request, dict) or request.get("protocol") != self.protocol:
            got = request.get("protocol") if isinstance(request, dict) else None
            raise PluginInputError(f"expected `protocol` to be {self.protocol}, got {json.dumps(got)}")
        if self.tenant is not None and request.get("tenant") != self.tenant:
            # A tenant's instance never handles another tenant's data, whoever sent it.
            raise PluginInputError(f"this instance serves tenant {self.tenant}, not {json.dumps(request.get('tenant'))}", 403)
        result = ep.handler(request, self.context)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, bytes) else json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()

    async def stop(self) -> None:
        """Stops taking calls (UNSUB, then a round trip so none is still on its way), finishes those in flight."""
        for ep in self.endpoints:
            self.nc.unsubscribe(ep.sid)
        await self.nc.flush()
        for ep in self.endpoints:
            self.nc.subs.pop(ep.sid, None)
        await self.idle.wait()
        for sid in self.control:
            self.nc.unsubscribe(sid)
        await self.nc.flush()


async def run(plugin: Plugin, env: Mapping[str, str], handle_signals: bool, log: Logger) -> int:
    """Serves until SIGTERM/SIGINT (returns 0 after the drain) or a lost connection (returns 1)."""
    try:
        hs = read_handshake(env, plugin)
    except ValueError as err:
        log.fatal(f"plugin handshake environment is invalid: {err}")
        return EXIT_CONFIG
    log = log.child(plugin=hs.name)
    common = [p for p in plugin.protocols if p in hs.host_protocols and p in SUPPORTED_PROTOCOLS]
    if not common:
        log.fatal("no protocol version in common with the host", pluginProtocols=list(plugin.protocols), hostProtocols=list(hs.host_protocols))
        return EXIT_CONFIG
    try:
        nc = await Connection.connect(hs.servers, hs.user, hs.password, f"plugin-{hs.name}")
    except ConnectionError as err:
        log.error(f"cannot connect to NATS: {err}")
        return 1
    service = Service(nc, plugin, hs, max(common), log)
    service.start()
    reading = asyncio.get_running_loop().create_task(read_forever(nc, log))
    stopping: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    draining: List[asyncio.Task[None]] = []

    async def drain(sig: str) -> None:
        log.info("draining", signal=sig, inFlight=service.in_flight)
        try:
            await service.stop()
            log.info("stopped")
            stopping.done() or stopping.set_result(0)
        except Exception as err:  # noqa: BLE001
            log.error("drain failed", err=err)
            stopping.done() or stopping.set_result(1)

    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda s=sig: draining or draining.append(asyncio.ensure_future(drain(s.name))))
    await nc.flush()
    log.info("plugin ready", id=service.id, protocol=max(common), concurrency=hs.concurrency,
             capabilities=[f"{k}.{c}" for k, c, _ in plugin.capabilities])
    done, _ = await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stopping in done:
        nc.close()
        return stopping.result()
    log.error("NATS connection closed; exiting", err=reading.exception())
    return 1


async def read_forever(nc: Connection, log: Logger) -> None:
    while True:
        try:
            await nc.read_loop()
        except ServerWarning as warning:
            log.warn(f"server: {warning}")
            continue
        except asyncio.IncompleteReadError:
            raise ConnectionError("the server closed the connection") from None


def serve(plugin: Plugin, *, env: Optional[Mapping[str, str]] = None, handle_signals: bool = True) -> None:
    """Serves ``plugin`` as the handshake environment says, then exits: 0 after a SIGTERM drain,
    78 (one stderr line) on a protocol mismatch or an unusable environment, 1 on a lost connection."""
    env = os.environ if env is None else env
    log = Logger(env.get("LOG_LEVEL") or "info")
    sys.exit(asyncio.run(run(plugin, env, handle_signals, log)))
