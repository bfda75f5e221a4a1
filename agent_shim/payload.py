"""Payloads: snapshot on the caller's thread, then redact and truncate on the sender thread.

The caller pays only for :func:`snapshot`, a C-speed msgpack encoding that freezes the value
(AG2 mutates its message dicts later); only a value the C packer refuses (a type it does not
know, a lone surrogate, a cycle, an int over 64 bits, deep nesting) takes a slower Python path
that turns it into plain data. :class:`Cleaner` then runs on the sender thread, before anything
is written to a socket or to disk, and applies the one policy to **every** field of a record
(payloads, their keys, error, task, names, subtypes, conditions):

- **Redaction.** The value of a key that names a secret (``api_key``, ``PGPASSWORD``,
  ``openaiApiKey``, ``client_secret``, ``AZURE_OPENAI_KEY``, ...) becomes ``"[REDACTED]"``; so
  does every secret-looking part of a text: provider keys (OpenAI, Anthropic, AWS, GitHub,
  Slack, Google, Hugging Face, Stripe, Groq), JWTs, PEM private keys, authorization headers,
  passwords in URLs and ``NAME_PASSWORD=``/``_TOKEN=``/``_KEY=``/``_SECRET=`` assignments
  (also as JSON or YAML). Both lists can be extended (``CMBAGENT_REDACT_KEYS``,
  ``CMBAGENT_REDACT_PATTERNS``).
- **Truncation,** after redaction (a cut never leaves a secret's prefix): a string longer than
  ``max_field_chars`` (default 32,768) is cut to that length plus a marker; containers nested
  deeper than :data:`MAX_DEPTH` levels are replaced by :data:`DEEPER`. The record's
  ``meta._truncated`` maps the path of each cut (for example ``inputs.content``) to the
  original length, or to ``"depth"``.
- **Text that cannot be stored** is made storable: a lone surrogate becomes U+FFFD, bytes become
  ``"<N bytes>"``, an object becomes its ``str``, an int beyond 64 bits its decimal text.
"""

from __future__ import annotations

import codecs
import functools
import re
import threading
from collections.abc import Callable
from typing import Any

import msgpack

REDACTED = "[REDACTED]"
#: Containers nested deeper than this many levels in one payload are cut.
MAX_DEPTH = 64
DEEPER = f"[nested deeper than {MAX_DEPTH} levels]"
CYCLE = "[reference cycle]"
PAYLOAD_FIELDS = frozenset(("inputs", "outputs", "meta"))
#: Record fields that hold 16-byte ids (``records``): the only bytes kept as bytes.
ID_FIELDS = frozenset(("id", "run_id", "session_id", "node_id", "parent_event_id",
                       "parent_node_id", "from_node_id", "to_node_id", "event_id"))
_INT_RANGE = range(-(2**63), 2**64)  # what msgpack can encode

# --- secret keys -----------------------------------------------------------------------------

_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")  # snake, kebab, camel and UPPER case
#: A key whose last word ends with one of these names a secret (``PGPASSWORD``, ``x-auth-token``).
_SECRET_ENDINGS = ("password", "passwd", "passphrase", "pwd", "secret", "secrets", "token",
                   "apikey", "credential", "credentials", "cookie", "authorization")
#: ``<word>_token`` is a count or a pointer, not a secret, after these words.
_NOT_SECRET_TOKENS = frozenset(("max", "min", "num", "total", "prompt", "completion", "page",
                                "next"))
#: ``<word>_key`` names a secret (``signing_key``, ``AZURE_OPENAI_KEY``) unless the word says it
#: is a lookup key.
_NOT_SECRET_KEYS = frozenset(("primary", "sort", "foreign", "partition", "cache", "public",
                              "group", "routing", "lookup", "index", "hash", "row", "map",
                              "unique", "shard", "join", "order", "search", "idempotency",
                              "dedup", "object", "bucket", "table", "column", "field", "record",
                              "item", "node", "parent", "child", "dict", "hot"))


def names_secret(key: str) -> bool:
    """Whether a payload key names a secret, so that its value must not be stored."""
    words: list[str] = _KEY_WORDS.findall(key)
    if not words:
        return False
    last = words[-1].lower()
    before = words[-2].lower() if len(words) > 1 else ""
    if last == "key":
        return before != "" and before not in _NOT_SECRET_KEYS
    if before in _NOT_SECRET_TOKENS and last.endswith("token"):
        return False
    return last.endswith(_SECRET_ENDINGS)


# --- secret text -----------------------------------------------------------------------------


#: A rule: text in, the same text with each match redacted out.
Rule = Callable[[str], str]


def _unless_absent(word: str, rule: Rule) -> Rule:
    """``rule``, run only on texts that hold ``word`` in any case: a pattern with no literal
    prefix scans far slower than ``str.lower`` and ``in`` do."""

    def guarded(text: str) -> str:
        return rule(text) if word in text.lower() else text

    return guarded


def _keep_label(match: re.Match[str]) -> str:
    return (match.group(1) or "") + REDACTED if match.lastindex else REDACTED


def _shape(pattern: str, flags: int = 0) -> Rule:
    """Redacts each match of ``pattern``, keeping its one group if it has one."""
    return functools.partial(re.compile(pattern, flags).sub, _keep_label)


# Assignments (``NAME=value``, ``NAME: value``, ``"name": "value"``, YAML, ``Authorization:
# Basic ...``) are found from their separator: the name is read backwards from each ``:`` or
# ``=``, which is far cheaper than trying a name at every position of the text.
_SECRET_NAMES = ("password", "passwd", "passphrase", "secret", "token", "credential",
                 "credentials", "cookie", "authorization")
_SECRET_KEY_QUALIFIERS = ("api", "access", "secret", "private", "signing", "auth", "client",
                          "master", "encryption", "license", "session")
_LONGEST_NAME = 40  # with the quotes and blanks before the separator


def _backwards(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(word[::-1]) for word in sorted(words, key=len, reverse=True))


#: A name that ends a secret's name, right before a separator, read backwards: the end of
#: ``OPENAI_API_KEY``, ``db_password``, ``"client_secret"``, ``x-auth-token``, ``signingKey``;
#: ``FOO_KEY`` counts only in capitals (an environment variable; ``sort_key`` does not).
_NAME_BACKWARDS = re.compile(
    r"[ \t]*[\"']?\\?(?:(?i:" + _backwards(_SECRET_NAMES) + r"|yek[_\-]?(?:"
    + _backwards(_SECRET_KEY_QUALIFIERS) + r"))|YEK_[A-Z0-9])")
#: Each separator with such a name before it, in the reversed text (one pattern per separator:
#: a literal first character lets the regex engine skip to it at C speed).
_CANDIDATES_BACKWARDS = tuple(re.compile(separator + "(?=" + _NAME_BACKWARDS.pattern + ")")
                              for separator in ("=", ":"))
#: What follows the separator: kept (group 1: an authorization scheme stays readable, and is
#: never taken for the value), then the value (quoted: up to its quote).
_VALUE_AFTER = re.compile(
    r"([ \t]*\\?[\"']?(?i:(?:basic|bearer|token|digest)[ \t]+)?)"
    r"(?!(?i:basic|bearer|token|digest)[ \t])"
    r"(?:(?<=[\"'])[^\"'\\\n]+|(?!(?i:none|null|true|false)\b)[^\s\"'\\`,;&<>(){}\[\]]{3,})")


def _redact_assignments(text: str) -> str:
    # Most separators (in prose, code) follow no secret's name: the reversed text is scanned
    # once per separator for candidates, each then confirmed within its window, which is what
    # reading backwards from every separator (in a Python loop) found.
    backwards, last = text[::-1], len(text) - 1
    candidates = sorted(last - match.start() for candidates in _CANDIDATES_BACKWARDS
                        for match in candidates.finditer(backwards))
    pieces: list[str] = []
    done = 0
    for at in candidates:
        if at < done or not _NAME_BACKWARDS.match(text[max(0, at - _LONGEST_NAME):at][::-1]):
            continue
        value = _VALUE_AFTER.match(text, at + 1)
        if value is not None:
            pieces += (text[done:value.end(1)], REDACTED)
            done = value.end()
    return "".join(pieces) + text[done:] if pieces else text


# Each pattern starts with a literal, so that the regex engine skips to it at C speed instead
# of trying every position (``\b`` in front would defeat that, and a hint check before each
# pattern costs as much as the search); a lookbehind right after the literal, as in
# ``sk-(?<!\w.{3})``, says what ``\b`` said: no word character before it.
#: In order: a PEM block goes before an assignment could cut its header off.
RULES: tuple[Rule, ...] = (
    _shape(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
           r"(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL),
    _shape(r"sk-(?<!\w.{3})[A-Za-z0-9_\-]{16,}"),  # OpenAI (sk-proj-, ...), Anthropic (sk-ant-)
    _shape(r"sk_(?:live|test)_(?<!\w.{8})[A-Za-z0-9]{16,}"),  # Stripe secret key
    _shape(r"rk_(?:live|test)_(?<!\w.{8})[A-Za-z0-9]{16,}"),  # Stripe restricted key
    _shape(r"(?:AKIA|ASIA)(?<!\w.{4})[0-9A-Z]{16}\b"),  # AWS access key id
    _shape(r"gh[pousr]_(?<!\w.{4})[A-Za-z0-9]{30,}|github_pat_(?<!\w.{11})[A-Za-z0-9_]{30,}"),
    _shape(r"xox[abeoprs]-(?<!\w.{5})[A-Za-z0-9\-]{10,}"),  # Slack
    _shape(r"AIza(?<!\w.{4})[0-9A-Za-z_\-]{35}|GOCSPX-(?<!\w.{7})[A-Za-z0-9_\-]{20,}"
           r"|ya29\.(?<!\w.{5})[A-Za-z0-9_\-]{20,}"),  # Google: key, OAuth secret and token
    _shape(r"hf_(?<!\w.{3})[A-Za-z0-9]{30,}"),  # Hugging Face
    _shape(r"gsk_(?<!\w.{4})[A-Za-z0-9]{30,}"),  # Groq
    _shape(r"eyJ(?<!\w.{3})[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*"),  # JWT
    _shape(r"(://[^\s/:@\"'<>]*:)[^\s/@\"'<>]+(?=@)"),  # a URL's password
    _unless_absent("bearer",
                   _shape(r"([Bb][Ee][Aa][Rr][Ee][Rr](?<!\w.{6})\s+)[A-Za-z0-9._~+/\-]{16,}=*")),
    _redact_assignments,
)
#: No rule matches a text shorter than this (``://:p@``).
_SHORTEST_SECRET = 6


# --- text msgpack and PostgreSQL can take ----------------------------------------------------

_SURROGATES = "cmbagent_tracking.surrogates"


def _one_replacement(error: UnicodeError) -> tuple[str, int]:
    """One U+FFFD per lone surrogate (kept by ``surrogatepass`` as three bytes ``ED A0-BF xx``),
    where the UTF-8 decoder alone would give three."""
    assert isinstance(error, UnicodeDecodeError)
    data, start = error.object, error.start
    if data[start] == 0xED and start + 2 < len(data) and 0xA0 <= data[start + 1] <= 0xBF:
        return "\ufffd", start + 3
    return "\ufffd", error.end


codecs.register_error(_SURROGATES, _one_replacement)


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (it cannot be UTF-8 encoded)."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", _SURROGATES)
    return text


def describe(value: Any) -> str:
    """``str(value)``, or what can be said about a value whose ``__str__`` fails; never raises."""
    try:
        return str(value)
    except Exception:
        pass
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` for the ``error`` of a failed span; never raises."""
    return f"{type(exc).__name__}: {describe(exc)}"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # past sys.get_int_max_str_digits()
        return f"<{value.bit_length()}-bit int>"


# --- the caller's side: snapshot -------------------------------------------------------------

_local = threading.local()


def snapshot(value: Any) -> bytes | None:
    """Freeze a payload as msgpack bytes; never raises."""
    if value is None:
        return None
    try:
        packer = _local.packer
    except AttributeError:  # this thread's first payload
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        # A reused packer (one per thread: it holds a buffer) with no ``default`` runs no Python
        # code; ``packb`` would build a packer per call, which costs as much as the packing.
        packed: bytes = packer.pack(value)
        return packed
    except Exception:  # something the C packer refuses (it resets itself): the slow path
        pass
    try:
        return _pack_leniently(_plain(value, 1, set()))
    except Exception:  # a dict that changes size while read, an iterator that raises, ...
        return _pack_leniently(f"<unrecordable {type(value).__name__}>")


def _pack_leniently(value: Any) -> bytes:
    # Lone surrogates are kept as invalid UTF-8, replaced when the sender unpacks them.
    packed: bytes = msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass")
    return packed


def _plain(value: Any, depth: int, ancestors: set[int]) -> Any:
    """``value`` as msgpack-native data. Containers are kept one level past :data:`MAX_DEPTH`,
    so that the cleaner cuts and records them like those of the fast path."""
    if value is None or isinstance(value, (str, bytes, bool, float)):
        return value
    if isinstance(value, int):
        return value if value in _INT_RANGE else _int_text(value)
    dump = getattr(value, "model_dump", None)  # pydantic models such as AG2's LLMConfig
    if callable(dump):
        try:
            value = dump()
        except Exception:
            return describe(value)
    if not isinstance(value, (dict, list, tuple, set, frozenset)):
        return describe(value)
    if depth > MAX_DEPTH + 1:
        return DEEPER
    if id(value) in ancestors:
        return CYCLE
    ancestors.add(id(value))
    if isinstance(value, dict):
        plain: Any = {_plain_key(k): _plain(v, depth + 1, ancestors) for k, v in value.items()}
    else:
        plain = [_plain(item, depth + 1, ancestors) for item in value]
    ancestors.discard(id(value))
    return plain


def _plain_key(key: Any) -> Any:
    kind = type(key)
    if key is None or kind is str or kind is bool or kind is float or kind is bytes:
        return key
    if kind is int and key in _INT_RANGE:
        return key
    return describe(key)


def thaw(raw: bytes) -> Any:
    """A snapshot's value again (lists for arrays); never raises."""
    options: dict[str, Any] = {"raw": False, "strict_map_key": False,
                               "unicode_errors": _SURROGATES}
    try:
        return msgpack.unpackb(raw, **options)
    except TypeError:  # a map keyed by an array (a tuple key): unhashable as a list
        pass
    except Exception:
        return f"<undecodable {len(raw)} bytes>"
    try:
        return msgpack.unpackb(raw, use_list=False, **options)
    except Exception:
        return f"<undecodable {len(raw)} bytes>"


# --- the sender's side: the policy -----------------------------------------------------------

#: Where a value sits: a field name, or (parent, key or list index); rendered only for a cut.
Path = str | tuple[Any, str | int]
_MEMO_CHARS = 64  # short strings (names, roles, statuses) repeat: their results are memoised
_MEMO_ENTRIES = 4096


def render(path: Path) -> str:
    """``inputs.messages[0].content`` for ``((("inputs", "messages"), 0), "content")``."""
    parts: list[str] = []
    while isinstance(path, tuple):
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return path + "".join(reversed(parts))


class Cleaner:
    """Redaction and truncation, compiled once from the settings."""

    def __init__(
        self,
        max_field_chars: int = 32_768,
        extra_keys: str | None = None,
        extra_patterns: str | None = None,
    ) -> None:
        self._extra_key = re.compile(extra_keys, re.IGNORECASE).fullmatch if extra_keys else None
        # Unlike the built-in rules, the user's patterns run on short texts too.
        self._extra_text = re.compile(extra_patterns).sub if extra_patterns else None
        self._limit = max_field_chars
        self._memo_chars = min(_MEMO_CHARS, max_field_chars)
        # Short texts (names, roles, statuses, payload keys) repeat from record to record, so
        # their outcomes are memoised: a short text's clean form, a short key's clean form and
        # whether it names a secret. Only valid short texts are keys, so a hit needs no checks.
        self._texts: dict[str, str] = {}
        self._keys: dict[str, tuple[str, bool]] = {}
        self._secret_keys: dict[str, bool] = {}

    def clean_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Make every field of a record storable and apply the policy, in place; returns it."""
        truncated: dict[str, Any] = {}
        texts = self._texts
        # One pass, cheapest tests first: most fields are ids, times, None or a memoised text.
        for name, value in record.items():
            kind = type(value)
            if kind is str:
                clean = texts.get(value)
                if clean is None:
                    clean = self._text(valid_text(value), name, truncated)
                record[name] = clean
            elif value is None or kind is float or kind is bool:
                continue
            elif kind is bytes:
                if name in PAYLOAD_FIELDS:
                    record[name] = self._clean(thaw(value), name, truncated, 1)
                elif name not in ID_FIELDS:
                    record[name] = f"<{len(value)} bytes>"
            elif kind is int:
                if value not in _INT_RANGE:
                    record[name] = _int_text(value)
            elif name in PAYLOAD_FIELDS:  # not snapshotted: a record built by hand
                record[name] = self._clean(value, name, truncated, 1)
            else:
                record[name] = self._text(valid_text(describe(value)), name, truncated)
        if truncated:
            meta = record.get("meta")
            if not isinstance(meta, dict):
                meta = {} if meta is None else {"value": meta}
            meta["_truncated"] = truncated
            record["meta"] = meta
        return record

    def redact_text(self, value: str) -> str:
        """``value`` with every secret-looking part replaced by ``[REDACTED]``."""
        if len(value) >= _SHORTEST_SECRET:
            for redact in RULES:
                value = redact(value)
        if self._extra_text is not None:
            value = self._extra_text(REDACTED, value)
        return value

    def is_secret_key(self, key: str) -> bool:
        """Whether the value under payload key ``key`` is redacted whole."""
        secret = self._secret_keys.get(key)
        if secret is None:
            secret = names_secret(key) or bool(self._extra_key and self._extra_key(key))
            if len(self._secret_keys) >= _MEMO_ENTRIES:
                self._secret_keys.clear()
            self._secret_keys[key] = secret
        return secret

    def _text(self, value: str, path: Path, truncated: dict[str, Any]) -> str:
        """Redacted, then cut to the limit: a secret at the cut is gone whole."""
        if len(value) <= self._memo_chars:
            clean = self._texts.get(value)
            if clean is None:
                if len(self._texts) >= _MEMO_ENTRIES:
                    self._texts.clear()
                clean = self._texts[value] = self.redact_text(value)
            return clean
        clean = self.redact_text(value)
        if len(clean) > self._limit:
            truncated[render(path)] = len(value)
            clean = f"{clean[: self._limit]}…[truncated {len(clean) - self._limit} chars]"
        return clean

    def _clean(self, value: Any, path: Path, truncated: dict[str, Any], depth: int) -> Any:
        kind = type(value)
        if kind is str:
            clean = self._texts.get(value)
            return self._text(value, path, truncated) if clean is None else clean
        if kind is dict or kind is list or kind is tuple:
            if depth > MAX_DEPTH:
                truncated[render(path)] = "depth"
                return DEEPER
            if kind is dict:
                return self._clean_dict(value, path, truncated, depth)
            return [self._clean(item, (path, i), truncated, depth + 1)
                    for i, item in enumerate(value)]
        if kind is bytes:
            return f"<{len(value)} bytes>"
        return value

    def _clean_dict(self, value: dict[Any, Any], path: Path, truncated: dict[str, Any],
                    depth: int) -> dict[str, Any]:
        out = {}
        keys, texts = self._keys, self._texts
        for key, item in value.items():
            known = keys.get(key) if type(key) is str else None
            if known is None:
                known = self._key(key, path, truncated)
            name, secret = known
            if secret and item is not None and item != "":
                out[name] = REDACTED
                continue
            kind = type(item)
            if kind is str:  # inline: the most common value, and often a memoised one
                clean = texts.get(item)
                out[name] = self._text(item, (path, name), truncated) if clean is None else clean
            elif kind is dict or kind is list or kind is tuple or kind is bytes:
                out[name] = self._clean(item, (path, name), truncated, depth + 1)
            else:
                out[name] = item
        return out

    def _key(self, key: Any, path: Path, truncated: dict[str, Any]) -> tuple[str, bool]:
        """A payload key's clean form and whether it names a secret; memoised if short."""
        text = key if type(key) is str else describe(key)
        name = self._text(text, path, truncated) if len(text) <= self._limit else \
            self._text(text, (path, text[: self._limit]), truncated)
        known = (name, self.is_secret_key(text))
        if type(key) is str and len(key) <= self._memo_chars:
            if len(self._keys) >= _MEMO_ENTRIES:
                self._keys.clear()
            self._keys[key] = known
        return known
