"""Unit tests of the Python SDK's pure parts (the wire and the services protocol run in conformance.int.test.ts)."""
from __future__ import annotations

import unittest

from flexcore_plugin import PluginInputError, define_plugin, parse_headers, read_handshake

PLUGIN = define_plugin(version="1.0.0", description="t", steps={"s": lambda req, ctx: {"output": req["input"]}})
ENV = {"FLEXCORE_PLUGIN_NAME": "demo", "FLEXCORE_PLUGIN_NATS_URL": "nats://127.0.0.1:4222,127.0.0.1:4223"}


class Handshake(unittest.TestCase):
    def test_defaults_and_values(self) -> None:
        hs = read_handshake({**ENV, "FLEXCORE_PLUGIN_CONFIG": '{"a":1}', "FLEXCORE_PLUGIN_NONCE": "n"}, PLUGIN)
        self.assertEqual((hs.name, hs.servers, hs.host_protocols, hs.concurrency, hs.nonce), ("demo", ("nats://127.0.0.1:4222", "127.0.0.1:4223"), (1,), 64, "n"))
        self.assertEqual(hs.config["a"], 1)
        with self.assertRaises(TypeError):
            hs.config["a"] = 2  # type: ignore[index]

    def test_errors_name_the_variable(self) -> None:
        for var, value in (("FLEXCORE_PLUGIN_NAME", "Bad.Name"), ("FLEXCORE_PLUGIN_NATS_URL", "nats://nohost"), ("FLEXCORE_PLUGIN_PROTOCOLS", "one"),
                           ("FLEXCORE_PLUGIN_CONCURRENCY", "0"), ("FLEXCORE_PLUGIN_CONCURRENCY", "-3"), ("FLEXCORE_PLUGIN_CONFIG", "[]")):
            with self.assertRaises(ValueError) as caught:
                read_handshake({**ENV, var: value}, PLUGIN)
            self.assertIn(f"`{var}`", str(caught.exception))


class Definition(unittest.TestCase):
    def test_refuses_bad_definitions(self) -> None:
        for kwargs in ({"version": "1.0"}, {"version": "1.0.0", "name": "Bad_"}, {"version": "1.0.0", "steps": {"Bad.Name": print}},
                       {"version": "1.0.0", "steps": {"s": "not callable"}}, {"version": "1.0.0"}, {"version": "1.0.0", "protocols": ()}):
            with self.assertRaises(ValueError, msg=str(kwargs)):
                define_plugin(description="d", **kwargs)  # type: ignore[arg-type]

    def test_input_error_status_is_4xx(self) -> None:
        self.assertEqual(PluginInputError("x").status, 400)
        self.assertEqual(PluginInputError("x", 422).status, 422)
        self.assertEqual(PluginInputError("x", 503).status, 400)


class Headers(unittest.TestCase):
    def test_parses_status_and_fields(self) -> None:
        self.assertEqual(parse_headers(b"NATS/1.0 503\r\n\r\n"), {"Status": "503"})
        self.assertEqual(parse_headers(b"NATS/1.0\r\nNats-Service-Error: a: b\r\nX: 1\r\n\r\n"), {"Nats-Service-Error": "a: b", "X": "1"})


if __name__ == "__main__":
    unittest.main()
