"""The redaction pre-screen (``payload._SECRET_HINTS``) never lets the full pattern's match go."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_shim.payload import _SECRET_TEXT, REDACTED, Cleaner

FULL = re.compile(_SECRET_TEXT)
PIECES = ["sk-", "sk-proj-", "AKIA", "ghp_", "gho_", "ghs_", "xoxb-", "AIza", "hf_", "gsk_",
          "Bearer ", "BEARER\t", "api_key=", "API-KEY: ", "apikey=", "secret=", "Password:",
          "passwd=", "token = ", "\"token\": \"", "ſecret=", "to\u212aen=", "apİ_key=",
          "ABCDEFGHIJKLMNOP0123456789abcdefghij", "0123456789ABCDEF", " ", "-", "_", "=",
          "'", "\"", "é", "\n", "x" * 40]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=12), max_size=12))
def test_the_pre_screen_gives_what_the_full_pattern_gives(parts: list[str]) -> None:
    text = "".join(parts)
    assert Cleaner().redact_text(text) == FULL.sub(REDACTED, text)


def test_extra_patterns_run_on_every_text() -> None:
    cleaner = Cleaner(extra_patterns=r"CMB-\d{4}")
    assert cleaner.redact_text("the map CMB-1234 is private") == f"the map {REDACTED} is private"
    assert cleaner.redact_text("key sk-abcdefghijklmnop0123 and CMB-9999") == \
        f"key {REDACTED} and {REDACTED}"
