"""Part 7: what redaction costs per KB of text, against the previous redaction in the same run.

The baseline is a copy of the patterns and pre-screen the shim used before issue 9 (below): one
regex of nine alternatives, run whenever the text contained one of 16 hints; the hint ``api``
is in "rapidly" and "capital", so ordinary prose paid for the whole regex. Ours is
``agent_shim.payload.Cleaner``. Both redact the same texts, in a rotating order, per round:

- *prose*: about 4 KB of English of the kind agents exchange (analysis, plans, code talk),
  with words such as "rapidly", "capital", "key", "token" and "passed" but no secret;
- *prose with secrets*: the same prose with ten secrets of different shapes planted in it.

The figure is µs per KB of text (median over rounds, interquartile range in brackets); the
ratio is ours / baseline per round. The goal: prose costs at most a fifth of the baseline.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

from .harness import Bench, rotated
from .report import Result
from .stats import Summary, ratios

GOAL = 0.2

# --- the baseline: agent_shim/payload.py before issue 9 ----------------------------------------

_BASELINE_TEXT = re.compile("|".join((
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
    r"\bAIza[0-9A-Za-z_\-]{35}",
    r"\bhf_[A-Za-z0-9]{30,}",
    r"\bgsk_[A-Za-z0-9]{30,}",
    r"(?i:\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*)",
    r"(?i:\b(?:api[_\-]?key|secret|password|passwd|token)[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{6,})",
))).sub
_BASELINE_HINTS = ("sk-", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "aiza", "hf_",
                   "gsk_", "bearer", "api", "secret", "passw", "token")


def baseline_redact(value: str) -> str:
    folded = value.casefold()
    for hint in _BASELINE_HINTS:
        if hint in folded:
            return _BASELINE_TEXT("[REDACTED]", value)
    return value


# --- the texts ---------------------------------------------------------------------------------

_SENTENCES = (
    "The power spectrum rises rapidly at low multipoles before the first acoustic peak.",
    "We fit the capital parameters of the model with a wider prior on the optical depth.",
    "The key idea is to pass the residual maps through the same mask before comparing them.",
    "Each step passed its checks, so the controller moves on to plotting the posterior.",
    "The engineer wrote a function that reads the FITS file and returns a HEALPix map.",
    "Token usage stayed under the budget: the planner used fewer tokens than last time.",
    "A monkey patch of the reader was not needed after the library was upgraded.",
    "The chain converged after 40,000 samples; the Gelman-Rubin statistic is below 1.01.",
    "Please summarise the findings in two paragraphs and list the open questions.",
    "The reviewer asked whether the foreground model accounts for thermal dust emission.",
)
SECRETS = (
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJklmnop", "hf_abcdefghijklmnopqrstuvwxyzABCDEF12",
    "DB_PASSWORD=correct-horse-battery", "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    "postgresql://analyst:s3cr3t-pw@db.example.org/cmb",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbmFseXN0In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
    '{"client_secret": "Zx9-Yw8_Vu7-Ts6"}', "sk_live_51Habcdefghijklmnopqrstuv",
)


def prose(size: int, seed: int) -> str:
    chooser = random.Random(seed)
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < size:
        parts.append(chooser.choice(_SENTENCES))
    return " ".join(parts)[:size]


def with_secrets(text: str) -> str:
    words = text.split(" ")
    step = len(words) // (len(SECRETS) + 1)
    for i, secret in enumerate(SECRETS, 1):
        words.insert(i * step + i - 1, secret)
    return " ".join(words)


def per_kb(redact: Callable[[str], str], texts: list[str]) -> float:
    """µs per KB to redact every text once."""
    started = time.perf_counter_ns()
    for text in texts:
        redact(text)
    elapsed_us = (time.perf_counter_ns() - started) / 1000
    return elapsed_us / (sum(len(t) for t in texts) / 1024)


def run(bench: Bench) -> list[Result]:
    from agent_shim.payload import Cleaner

    rounds, count = bench.scale(15, 5), bench.scale(200, 50)
    variants = {"ours": Cleaner().redact_text, "baseline": baseline_redact}
    sets = {"prose": [prose(4096, seed) for seed in range(count)]}
    sets["prose with secrets"] = [with_secrets(text) for text in sets["prose"]]
    leaked = [s for s in SECRETS
              if any(s in variants["ours"](t) for t in sets["prose with secrets"][:5])]
    results = []
    for name, texts in sets.items():
        figures: dict[str, list[float]] = {variant: [] for variant in variants}
        for round_number in range(rounds):
            for variant in rotated(list(variants), round_number):
                figures[variant].append(per_kb(variants[variant], texts))
        ratio = ratios(figures["ours"], figures["baseline"])
        is_prose = name == "prose"
        results.append(Result(
            "7 redaction", f"{name}, 4 KB texts",
            Summary.of(figures["ours"]).format(" µs/KB"),
            "before issue 9 " + Summary.of(figures["baseline"]).format(" µs/KB"),
            ratio, f"≤ {GOAL} × before" if is_prose else "-",
            ratio.median <= GOAL if is_prose else None,
            note="" if is_prose or not leaked else f"ours left {len(leaked)} secrets: {leaked}"))
    return results
