"""Payloads: snapshot on the caller's thread, then redact and truncate on the sender thread.

The caller pays only for :func:`snapshot`, a C-speed msgpack encoding that freezes the value
(AG2 mutates its message dicts later) and turns anything msgpack cannot encode into text.
:class:`Cleaner` then runs on the sender thread, before anything is written to a socket or to
disk, and applies the one truncation and redaction policy:

- **Redaction.** A value whose key looks like a credential (``api_key``, ``token``, ``password``,
  ``authorization``, ``secret``, ...) becomes ``"[REDACTED]"``; so does any text that looks like
  a provider key (``sk-...``, ``AKIA...``, ``ghp_...``, ``Bearer ...``, ``api_key=...``) wherever
  it occurs. Both lists can be extended (``CMBAGENT_REDACT_KEYS``, ``CMBAGENT_REDACT_PATTERNS``).
- **Truncation.** Every string longer than ``max_field_chars`` (default 32,768) is cut to that
  length plus a marker; the record's ``meta._truncated`` maps the field's path (for example
  ``inputs.content``) to its original length. Bytes are replaced by ``"<N bytes>"``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import msgpack

REDACTED = "[REDACTED]"
PAYLOAD_FIELDS = ("inputs", "outputs", "meta")
TEXT_FIELDS = ("error", "task")

_SECRET_KEYS = (
    r"(?:.*[_\-.])?(?:api[_\-]?key|apikey|secret|secret[_\-]?key|client[_\-]?secret|token|"
    r"access[_\-]?token|refresh[_\-]?token|id[_\-]?token|auth[_\-]?token|password|passwd|pwd|"
    r"authorization|proxy[_\-]?authorization|cookie|set[_\-]?cookie|private[_\-]?key|credentials?)"
)
_SECRET_TEXT = "|".join(
    (
        r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic
        r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
        r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack
        r"\bAIza[0-9A-Za-z_\-]{35}",  # Google
        r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
        r"\bgsk_[A-Za-z0-9]{30,}",  # Groq
        r"(?i:\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*)",
        r"(?i:\b(?:api[_\-]?key|secret|password|passwd|token)[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{6,})",
    )
)
#: Every text that ``_SECRET_TEXT`` can match contains one of these once case-folded. Searching
#: for them is ~20x cheaper than running the pattern over text with no secret in it (most text),
#: so the pattern runs only on text that has one. Keep in step with ``_SECRET_TEXT``.
_SECRET_HINTS = ("sk-", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "aiza", "hf_",
                 "gsk_", "bearer", "api", "secret", "passw", "token")


def _fallback(value: Any) -> Any:
    """What msgpack calls for a type it cannot encode: a plain structure, else text."""
    dump = getattr(value, "model_dump", None)  # pydantic models such as AG2's LLMConfig
    if callable(dump):
        try:
            return dump()
        except Exception:
            pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


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
        return packer.pack(value)
    except Exception:  # a type msgpack cannot encode (the packer resets itself)
        pass
    try:
        return msgpack.packb(value, default=_fallback, use_bin_type=True)
    except Exception:  # ints over 64 bits, recursion, a __str__ that raises deep inside ...
        return msgpack.packb(_fallback(value), default=_fallback, use_bin_type=True)


class Cleaner:
    """Redaction and truncation, compiled once from the settings."""

    def __init__(
        self,
        max_field_chars: int = 32_768,
        extra_keys: str | None = None,
        extra_patterns: str | None = None,
    ) -> None:
        keys = _SECRET_KEYS + (f"|{extra_keys}" if extra_keys else "")
        self._secret_key = re.compile(f"^(?:{keys})$", re.IGNORECASE).match
        self._builtin_text = re.compile(_SECRET_TEXT).sub
        # The user's patterns cannot be pre-screened: they run on every text.
        self._extra_text = re.compile(extra_patterns).sub if extra_patterns else None
        self._limit = max_field_chars

    def clean_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Unfreeze a record's payloads and apply the policy, in place; returns the record."""
        truncated: dict[str, int] = {}
        for name in PAYLOAD_FIELDS:
            raw = record.get(name)
            if raw is None:
                continue
            try:
                value = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
            except Exception:  # e.g. a map keyed by a tuple: keep what we can say about it
                value = f"<undecodable {len(raw)} bytes>"
            record[name] = self.clean(value, name, truncated)
        for name in TEXT_FIELDS:
            if isinstance(record.get(name), str):
                record[name] = self.clean(record[name], name, truncated)
        if truncated:
            meta = record.get("meta")
            if not isinstance(meta, dict):
                meta = {} if meta is None else {"value": meta}
            meta["_truncated"] = truncated
            record["meta"] = meta
        return record

    def redact_text(self, value: str) -> str:
        """``value`` with every secret-looking part replaced by ``[REDACTED]``."""
        folded = value.casefold()
        for hint in _SECRET_HINTS:
            if hint in folded:
                value = self._builtin_text(REDACTED, value)
                break
        if self._extra_text is not None:
            value = self._extra_text(REDACTED, value)
        return value

    def clean(self, value: Any, path: str, truncated: dict[str, int]) -> Any:
        if isinstance(value, str):
            if len(value) > self._limit:
                truncated[path] = len(value)
                value = f"{value[: self._limit]}…[truncated {len(value) - self._limit} chars]"
            return self.redact_text(value) if len(value) >= 12 else value
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                key = key if isinstance(key, str) else str(key)
                secret = self._secret_key(key) and item not in (None, "")
                out[key] = REDACTED if secret else self.clean(item, f"{path}.{key}", truncated)
            return out
        if isinstance(value, list):
            return [self.clean(item, f"{path}[{i}]", truncated) for i, item in enumerate(value)]
        if isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        return value
