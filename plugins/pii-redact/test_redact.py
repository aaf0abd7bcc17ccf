"""Unit tests of the detectors: ``python3 -B -m unittest discover -s plugins/pii-redact`` (run by redact.test.ts)."""
from __future__ import annotations

import time
import unittest

from redact import Options, OptionsError, find_cards, luhn, parse_options, redact, redact_text

R = "[REDACTED]"


def red(text: str, **options: object) -> str:
    return redact_text(text, parse_options(options or None))[0]


class Luhn(unittest.TestCase):
    def test_known_numbers(self) -> None:
        for number in ("4111111111111111", "5500005555555559", "378282246310005", "6011111111111117", "4242424242424242"):
            self.assertTrue(luhn(number), number)
        for number in ("4111111111111112", "1234567812345678", "378282246310006"):
            self.assertFalse(luhn(number), number)


class Cards(unittest.TestCase):
    def test_redacts_valid_cards_with_spaces_or_dashes(self) -> None:
        self.assertEqual(red("card 4111 1111 1111 1111 ok"), f"card {R} ok")
        self.assertEqual(red("card 4111-1111-1111-1111."), f"card {R}.")
        self.assertEqual(red("amex 378282246310005"), f"amex {R}")
        self.assertEqual(red("x 4000000000000000006"), f"x {R}")  # 19 digits

    def test_leaves_numbers_that_fail_luhn_or_length(self) -> None:
        for text in ("order 4111111111111112", "id 123456789012", "long 41111111111111111111", "iban-ish 1234 5678 9012 3456"):
            self.assertEqual(red(text, detectors=["card"]), text)

    def test_a_card_followed_by_more_digit_groups_is_still_found(self) -> None:
        self.assertEqual(red("4111 1111 1111 1111 12", detectors=["card"]), f"{R} 12")  # 411111111111111112 fails Luhn
        self.assertEqual(find_cards("x 12 4111111111111111"), [(5, 21)])

    def test_never_half_taken_for_a_phone(self) -> None:
        self.assertEqual(red("pay 4111 1111 1111 1111 now", replacement="<{detector}>"), "pay <card> now")


class Emails(unittest.TestCase):
    def test_redacts_addresses(self) -> None:
        self.assertEqual(red("mail jane.doe+tag@mail.example.co.uk, thanks"), f"mail {R}, thanks")
        self.assertEqual(red("<o'neil_x@ex-ample.org>"), f"<{R}>")

    def test_leaves_non_addresses(self) -> None:
        for text in ("@handle", "a@b", "user@localhost", "price 5@3.50"):
            self.assertEqual(red(text, detectors=["email"]), text)


class Phones(unittest.TestCase):
    def test_redacts_common_formats(self) -> None:
        for phone in ("+1 415 555 2671", "+44 20 7946 0958", "(415) 555-2671", "415-555-2671", "+4915123456789", "030 1234 5678", "415.555.2671"):
            self.assertEqual(red(f"call {phone} now", detectors=["phone"]), f"call {R} now", phone)

    def test_leaves_ids_amounts_dates_and_addresses(self) -> None:
        for text in ("order 5551234567", "total 1 250.00", "at 2026-01-31 12:30:00", "host 192.168.100.200", "v1.2.3", "2026-01-31", "room 12-34"):
            self.assertEqual(red(text, detectors=["phone"]), text, text)


class Options_(unittest.TestCase):
    def test_detectors_and_replacement(self) -> None:
        text = "a@b.io 4111111111111111 +1 415 555 2671"
        self.assertEqual(red(text, detectors=["email"]), f"{R} 4111111111111111 +1 415 555 2671")
        self.assertEqual(red(text, replacement="<{detector}>"), "<email> <card> <phone>")
        self.assertEqual(red(text, replacement=""), "  ")

    def test_bad_options_name_the_field(self) -> None:
        cases = [({"detector": ["email"]}, "options.detector"), ({"detectors": ["ssn"]}, "options.detectors"),
                 ({"detectors": []}, "options.detectors"), ({"replacement": 7}, "options.replacement"),
                 ({"replacement": "x" * 101}, "options.replacement"), ([1], "options")]
        for value, field in cases:
            with self.assertRaises(OptionsError) as caught:
                parse_options(value)
            self.assertIn(f"`{field}`", str(caught.exception))


class Recursive(unittest.TestCase):
    def test_every_string_in_objects_and_arrays_keys_too(self) -> None:
        data = {"user": {"email": "x@y.com", "phones": ["+1 415 555 2671", 42, None, True], "x@y.com": 1, "[REDACTED]": 2}, "n": 4111111111111111}
        out, count = redact(data)
        self.assertEqual(out, {"user": {"email": R, "phones": [R, 42, None, True], R: 1, f"{R} #2": 2}, "n": 4111111111111111})
        self.assertEqual(count, 3)

    def test_refuses_data_nested_too_deep(self) -> None:
        value: object = "x@y.com"
        for _ in range(300):
            value = [value]
        with self.assertRaises(ValueError):
            redact(value)

    def test_deterministic(self) -> None:
        data = {"a": "call +1 415 555 2671 or mail a@b.io", "b": ["4111 1111 1111 1111"]}
        self.assertEqual(redact(data), redact(data))


class Hostile(unittest.TestCase):
    PATTERNS = ("a", "a@", "1 ", "1-", "+1 ", "x@a.", "(1) ", "1", "a@b.c", "4111 ")

    def test_time_grows_linearly_with_the_text(self) -> None:
        """16x the text costs about 16x the time (256x if a pattern backtracked quadratically).
        Best of 3 (2) runs, and a factor of 64, so a busy machine does not fail it (a factor of 8
        between 20k and 80k characters did, under the whole suite's load)."""
        def cost(text: str, runs: int = 3) -> float:
            best = float("inf")
            for _ in range(runs):
                start = time.perf_counter()
                redact_text(text, Options())
                best = min(best, time.perf_counter() - start)
            return best

        for unit in self.PATTERNS:
            small, large = cost(unit * (10_000 // len(unit))), cost(unit * (160_000 // len(unit)), 2)
            self.assertLess(large, 64 * small + 0.05, f"{unit!r}: {small:.4f}s for 10k chars, {large:.4f}s for 160k")


if __name__ == "__main__":
    unittest.main()
