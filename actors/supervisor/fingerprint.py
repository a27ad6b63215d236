"""Normalization and fingerprints of actions and observations (DESIGN §4, "Loops").

Two levels of normalization, because they answer different questions:

* :func:`normalize` masks only what is *volatile by nature* (UUIDs, hex ids and
  addresses, timestamps, durations, temp paths, line numbers, whitespace). Two texts
  equal after it say the same thing, so exact-repeat, cycle and same-error detection
  use its digest. Ordinary numbers are kept: "3 failed" and "2 failed" are different
  test outcomes, and masking them would turn re-running a test between edits into a loop.
* :func:`normalize_loose` also masks every number. It feeds the SimHash, whose job is to
  find observations that differ only in a line count or line numbers (the same edit
  applied again and again while the file grows).

Digests use ``blake2b(digest_size=8)``: deterministic across processes (a new owner of a
partition rebuilds windows from the stream and must get the same fingerprints), unlike
Python's salted ``hash()``.
"""

from __future__ import annotations

import json
import re
from hashlib import blake2b
from typing import Any

import numpy as np
import numpy.typing as npt

_WS = re.compile(r"\s+")
# Patterns start with a character class rather than ``\b`` where they can: CPython's re
# then skips ahead quickly, and each pattern runs only when a cheap substring test says
# it can match (normalization runs on every observation; see bench/offline.py).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"0x[0-9a-fA-F]+|(?<![\w])(?=[0-9a-f]{0,63}[0-9])(?=[0-9a-f]{0,63}[a-f])[0-9a-f]{7,64}(?![\w])")
_TIMESTAMP = re.compile(
    r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?|(?<!\d)\d{1,2}:\d\d:\d\d(?:\.\d+)?"
)
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?(?:ms|us|µs|ns|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b")
_TMP_PATH = re.compile(r"/(?:private/)?(?:tmp|var/tmp|var/folders)/[^\s'\":]*")
_LINE_NO = re.compile(r"(?<=[Ll]ine )\d+|(?<=lineno[ =])\d+|(?<=:)\d+(?=:)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

#: Tokens kept for the SimHash; beyond this an observation is "the same kind of long text".
_MAX_TOKENS = 256
_FULL_CHARS = 4096
_HEAD_CHARS = 3072
_TAIL_CHARS = 1024
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_MASK64 = (1 << 64) - 1
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: spreads bits when combining tokens
_TOKEN_CACHE: dict[str, int] = {}
_TOKEN_CACHE_MAX = 65_536


def normalize(text: str) -> str:
    """Mask volatile parts of ``text`` and collapse whitespace.

    Texts longer than ``_FULL_CHARS`` get the full treatment on their head and tail only;
    the middle has digits dropped and whitespace collapsed at C speed, which keeps the
    cost per event bounded for 64 KB observations while a change anywhere still changes
    the result.

    Args:
        text: an observation, error or rendered action.

    Returns:
        The text with UUIDs, hex ids, timestamps, durations, temp paths and line
        numbers replaced by placeholders, and runs of whitespace collapsed to one space.
    """
    if len(text) > _FULL_CHARS:
        head, middle, tail = text[:_HEAD_CHARS], text[_HEAD_CHARS:-_TAIL_CHARS], text[-_TAIL_CHARS:]
        middle = " ".join(middle.translate(_DROP_DIGITS).split())
        return f"{_normalize(head)} {middle} {_normalize(tail)}"
    return _normalize(text)


def _normalize(text: str) -> str:
    if "-" in text:
        text = _UUID.sub("<uuid>", text)
    if ":" in text or "-" in text:
        text = _TIMESTAMP.sub("<ts>", text)
    text = _HEX.sub("<hex>", text)
    if "/tmp/" in text or "/var/" in text:
        text = _TMP_PATH.sub("<tmp>", text)
    text = _DURATION.sub("<dur>", text)
    if "ine" in text or ":" in text:
        text = _LINE_NO.sub("<n>", text)
    return " ".join(text.split())


def normalize_loose(text: str) -> str:
    """:func:`normalize` plus every remaining number masked (for near-duplicate detection)."""
    return _NUMBER.sub("#", normalize(text))


def observation_fingerprint(observation: str | None) -> tuple[int, int]:
    """The (digest, SimHash) pair of an observation, normalizing it once."""
    normalized = normalize(observation or "")
    return digest(normalized), simhash_normalized(normalized)


def digest(text: str) -> int:
    """A stable unsigned 64-bit digest of ``text`` (never 0, which means "none" in windows)."""
    value = int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return value or 1


def render_args(args: dict[str, Any] | None) -> str:
    """Render an action's arguments canonically: a lone ``command``/``text`` as itself, else sorted JSON."""
    if not args:
        return ""
    if len(args) == 1:
        (value,) = args.values()
        if isinstance(value, str):
            return value
    return json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)


def action_digest(tool: str | None, args: dict[str, Any] | None) -> int:
    """Digest of (tool, normalized args): equal for the same action with volatile parts masked."""
    return digest(f"{tool or ''}\x1f{normalize(render_args(args))}")


def observation_digest(observation: str | None) -> int:
    """Digest of the normalized observation (empty and missing observations are equal)."""
    return digest(normalize(observation or ""))


def _token_hash(token: str) -> int:
    cached = _TOKEN_CACHE.get(token)
    if cached is None:
        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_MAX:
            # A blunt reset keeps memory bounded; tokens repeat heavily, so it refills fast.
            _TOKEN_CACHE.clear()
        cached = int.from_bytes(blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        _TOKEN_CACHE[token] = cached
    return cached


def simhash(text: str) -> int:
    """64-bit SimHash over token bigrams of the loosely normalized ``text``.

    Texts that differ only in numbers, whitespace or a few tokens land a few bits apart.
    """
    return simhash_normalized(normalize(text))


def simhash_normalized(normalized: str) -> int:
    """:func:`simhash` of text already passed through :func:`normalize`.

    Token hashes are cached; bigram hashes and the bit vote are done in numpy.
    """
    # Dropping digits (a C-speed translate) is the loose normalization: a line count or a
    # line number changes no token.
    tokens = normalized.translate(_DROP_DIGITS).split(None, _MAX_TOKENS)[:_MAX_TOKENS]
    if not tokens:
        return 0
    get = _TOKEN_CACHE.get
    hashes = np.array([get(t) or _token_hash(t) for t in tokens], dtype=np.uint64)
    if len(hashes) > 1:
        # Bigrams keep some order information; rotating the right token makes (a, b) != (b, a).
        right = (hashes[1:] << np.uint64(1)) | (hashes[1:] >> np.uint64(63))
        hashes = (hashes[:-1] * _SHINGLE_MULT) ^ right
    return _vote(hashes)


def _vote(hashes: npt.NDArray[np.uint64]) -> int:
    bits = np.unpackbits(hashes.view(np.uint8)).reshape(-1, 64)
    ones = bits.sum(axis=0, dtype=np.int32)
    packed = np.packbits(ones * 2 > len(hashes))
    return int.from_bytes(packed.tobytes(), "big") & _MASK64


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit fingerprints."""
    return (a ^ b).bit_count()


def short(text: str | None, limit: int = 60) -> str:
    """One line of ``text`` for evidence: whitespace collapsed, cut to ``limit`` characters."""
    flat = _WS.sub(" ", text or "").strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


__all__ = [
    "action_digest",
    "digest",
    "hamming",
    "normalize",
    "normalize_loose",
    "observation_digest",
    "observation_fingerprint",
    "render_args",
    "short",
    "simhash",
    "simhash_normalized",
]
