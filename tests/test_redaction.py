"""Redaction: every secret shape of the corpus goes wherever it sits, ordinary values stay, and
a cut never leaves a secret's prefix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_shim.payload import REDACTED, Cleaner, names_secret, snapshot

from .helpers.secret_corpus import KEYS, ORDINARY, TEXTS, every_prefix


def cleaned(**record: object) -> dict[str, object]:
    """A record cleaned as the sender cleans it (payload fields snapshotted first)."""
    for name in ("inputs", "outputs", "meta"):
        if name in record:
            record[name] = snapshot(record[name])
    return Cleaner().clean_record(record)


@pytest.mark.parametrize("name", list(TEXTS))
def test_each_secret_shape_is_redacted_and_its_context_kept(name: str) -> None:
    secret, text = TEXTS[name]
    redacted = Cleaner().redact_text(text)
    assert REDACTED in redacted
    for leaked in every_prefix([secret]):
        assert leaked not in redacted, redacted
    # What names the secret (a variable, a header, a URL's user) stays readable.
    for label in ("OPENAI_API_KEY=", "Authorization: Basic ", "postgresql://analyst:",
                  "DB_PASSWORD=", '"client_secret": "', "password: "):
        if label in text:
            assert label in redacted


@pytest.mark.parametrize("key", list(KEYS))
def test_a_key_that_names_a_secret_hides_its_value(key: str) -> None:
    assert names_secret(key)
    record = cleaned(inputs={key: KEYS[key], "nested": [{key: {"deep": KEYS[key]}}]})
    assert record["inputs"] == {key: REDACTED, "nested": [{key: REDACTED}]}


def test_ordinary_fields_and_prose_come_through_unchanged() -> None:
    for key in ORDINARY:
        assert not names_secret(key), key
    record = cleaned(inputs=ORDINARY, meta={"usage": ORDINARY}, error=ORDINARY["prose"],
                     agent="planner", subtype="max_tokens=4096")
    assert record["inputs"] == ORDINARY
    assert record["meta"] == {"usage": ORDINARY}
    assert record["error"] == ORDINARY["prose"]
    assert record["subtype"] == "max_tokens=4096"


def test_every_text_field_is_redacted_and_dict_keys_too() -> None:
    secret, text = TEXTS["password_var"]
    record = cleaned(k="event", agent=text, subtype=text, error=text, task=text, name=text,
                     condition=text, model=text, inputs={text: 1, "list": [text]},
                     outputs=text, meta={"note": {text: text}})
    flat = repr(record)
    assert secret not in flat and secret[:8] not in flat
    assert record["agent"] == f"DB_PASSWORD={REDACTED} ./migrate"
    assert record["inputs"] == {record["agent"]: 1, "list": [record["agent"]]}


def test_redaction_comes_before_the_cut_so_no_prefix_is_left() -> None:
    secret, text = TEXTS["openai"]
    cut_in_the_secret = text.index(secret) + 12
    cleaner = Cleaner(max_field_chars=cut_in_the_secret)
    record = cleaner.clean_record({"error": text + " " + "x" * 100,
                                   "inputs": snapshot({"content": text + "y" * 100})})
    for value in (record["error"], record["inputs"]["content"]):
        assert "sk-proj" not in value and secret[:8] not in value
    assert record["meta"]["_truncated"] == {"error": len(text) + 101,
                                            "inputs.content": len(text) + 100}


@settings(max_examples=1000, deadline=None)
@given(name=st.sampled_from(list(TEXTS)), before=st.text(max_size=24), after=st.text(max_size=24),
       left=st.sampled_from([" ", "\n", "\t", "> ", "(", "[", "="]),
       right=st.sampled_from([" ", "\n", "\t", ".", ")", ",", ";"]))
def test_a_secret_is_found_whatever_surrounds_it(name: str, before: str, after: str, left: str,
                                                 right: str) -> None:
    secret, text = TEXTS[name]
    assert secret not in Cleaner().redact_text(before + left + text + right + after)


PIECES = ["sk-", "sk-proj-", "sk_live_", "rk_test_", "AKIA", "ASIA", "ghp_", "github_pat_",
          "xoxb-", "AIza", "GOCSPX-", "ya29.", "hf_", "gsk_", "eyJ", "eyJhbGciOi.", "-----BEGIN ",
          "PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "://", "u:pw@", "@", "Bearer ",
          "Basic ", "Authorization", "api_key", "API_KEY", "apiKey", "=", ": ", "password",
          "secret", "token", "_TOKEN", "_KEY", "A_KEY", "signing_key", "None", "\\\"", "\"",
          "'", "ABCDEFGHIJKLMNOP0123456789abcdefghij", "0123456789ABCDEF", " ", "-", "_", ".",
          "é", "\n", "x" * 40, REDACTED]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=8), max_size=14))
def test_redacting_twice_changes_nothing_more(parts: list[str]) -> None:
    cleaner = Cleaner()
    once = cleaner.redact_text("".join(parts))
    assert cleaner.redact_text(once) == once


def test_extra_patterns_run_on_every_text() -> None:
    cleaner = Cleaner(extra_patterns=r"CMB-\d{4}")
    assert cleaner.redact_text("the map CMB-1234 is private") == f"the map {REDACTED} is private"
    assert cleaner.redact_text("CMB-1") == "CMB-1"
    assert cleaner.redact_text("key sk-abcdefghijklmnop0123 and CMB-9999") == \
        f"key {REDACTED} and {REDACTED}"


def test_extra_keys_hide_their_values() -> None:
    record = Cleaner(extra_keys=r"map_id|.*_private").clean_record(
        {"inputs": snapshot({"MAP_ID": "m-1", "planck_private": "p", "map": "m"})})
    assert record["inputs"] == {"MAP_ID": REDACTED, "planck_private": REDACTED, "map": "m"}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "BeArEr"])
def test_a_bearer_token_in_prose_is_redacted_in_any_case(scheme: str) -> None:
    # Not behind a header name, so only the bearer rule (which runs only on texts that hold
    # the word, in any case) can find it.
    token = "opaqueTok3nValue9876543210abc"
    redacted = Cleaner().redact_text(f"then send {scheme} {token} with the request ünïcødé")
    assert redacted == f"then send {scheme} {REDACTED} with the request ünïcødé"
