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
import zlib
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any, cast

import numpy as np
import numpy.typing as npt

# Normalization runs on every observation (see bench/offline.py), so each pattern is
# written to *start with a single character class*: CPython's re then skips, in C, every
# position where that class cannot match instead of attempting a full match there. The
# leading lookbehinds of the natural forms are moved after the first character (e.g.
# ``(?<!\d)\d`` becomes ``\d(?<!\d\d)``), which matches exactly the same strings.
# Each pattern also runs only when a cheap substring test says it can match. Every pattern is
# ASCII-only (``re.ASCII``: ``\d`` is 0-9, ``\w`` and ``\b`` are ASCII), so those tests, made on
# the UTF-8 bytes, hold for any text: a non-ASCII character can be no part of a match's anchor.
_UUID = re.compile(r"[0-9a-fA-F][0-9a-fA-F]{7}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
# ``0x...`` or a whole word of 7-64 lowercase hex characters with at least one digit and one letter.
_HEX = re.compile(
    r"[0-9a-f](?:(?<=0)x[0-9a-fA-F]+"
    r"|(?<!\w[0-9a-f])(?:(?<=[0-9])|(?=[0-9a-f]{0,62}[0-9]))(?:(?<=[a-f])|(?=[0-9a-f]{0,62}[a-f]))"
    r"[0-9a-f]{6,63}(?!\w))",
    re.ASCII,
)
_TIMESTAMP = re.compile(
    r"\d(?:\d{3}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?"
    r"|(?<!\d\d)\d?:\d\d:\d\d(?:\.\d+)?)",
    re.ASCII,
)
# In an action a plain date is part of the question (flights on 2024-05-17, not on the 18th): only
# a date with a time of day, or a time alone, is masked there.
_ACTION_TIMESTAMP = re.compile(
    r"\d(?:\d{3}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"
    r"|(?<!\d\d)\d?:\d\d:\d\d(?:\.\d+)?)",
    re.ASCII,
)
_DURATION = re.compile(
    r"\d(?<![\w.]\d)\d*(?:\.\d+)? ?(?:ms|us|µs|ns|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b",
    re.ASCII,
)
_TMP_PATH = re.compile(r"/(?:private/)?(?:tmp|var/tmp|var/folders)/[^\s'\":]*", re.ASCII)
# A number after "line "/"lineno", or between colons (``file.py:42:``).
_LINE_NO = re.compile(r"\d(?:(?<=[Ll]ine \d)\d*|(?<=lineno[ =]\d)\d*|(?<=:\d)\d*(?=:))", re.ASCII)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_LETTER = re.compile(r"[^\W\d_]")
# A number standing alone in an action (``goto 120``, ``edit 41:43``, ``sed -n 1,40p``, ``head -5``),
# not part of a name (``test_2``, ``python3``, ``HAT030``, ``orders-7``): those name different things.
_ACTION_HEAD = 200
_LONE_NUMBER = re.compile(r"\d(?<![\w.]\d)(?<!\w-\d)[\d.]*", re.ASCII)

#: Tokens kept for the SimHash; beyond this an observation is "the same kind of long text".
_MAX_TOKENS = 256
_FULL_CHARS = 4096
_HEAD_CHARS = 3072
_TAIL_CHARS = 1024
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_DIGIT_BYTES = b"0123456789"
_MATMUL_FROM = 32
_LE_U64 = np.dtype("<u8")
_ONE = np.uint64(1)
_SIXTY_THREE = np.uint64(63)
_ONES = np.ones(_MAX_TOKENS, dtype=np.float32)
_MASK64 = (1 << 64) - 1
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: spreads bits when combining tokens
_TOKEN_CACHE: dict[str | bytes, bytes] = {}
_TOKEN_CACHE_MAX = 65_536
# Fingerprints of recent texts, by the raw text: a looping agent sends the same command and
# gets the same output again and again, and common outputs ("", "File updated.") recur
# across runs, so about a third of the work repeats. Keyed by the exact text, a hit is
# exactly what recomputing would give. Only short texts are kept (hashing a 64 KB key costs
# more than it saves, and keeping it alive costs memory): at most ~2 MB a worker.
_MEMO_MAX = 1024
_MEMO_CHARS = 2048
_OBS_MEMO: dict[str, tuple[int, int]] = {}
_ACTION_MEMO: dict[str, tuple[int, int]] = {}


def normalize(text: str, *, dates: bool = True) -> str:
    """Mask volatile parts of ``text`` and collapse whitespace.

    Texts longer than ``_FULL_CHARS`` get the full treatment on their head and tail only;
    the middle has digits dropped and whitespace collapsed at C speed, which keeps the
    cost per event bounded for 64 KB observations while a change anywhere still changes
    the result.

    Args:
        text: an observation, error or rendered action.
        dates: mask plain dates too (``False`` for actions, where a date is part of the question).

    Returns:
        The text with UUIDs, hex ids, timestamps, durations, temp paths and line
        numbers replaced by placeholders, and runs of whitespace collapsed to one space.
    """
    stamps = _TIMESTAMP if dates else _ACTION_TIMESTAMP
    if len(text) > _FULL_CHARS:
        head, middle, tail = text[:_HEAD_CHARS], text[_HEAD_CHARS:-_TAIL_CHARS], text[-_TAIL_CHARS:]
        middle = " ".join(middle.translate(_DROP_DIGITS).split())
        return f"{_normalize(head, stamps)} {middle} {_normalize(tail, stamps)}"
    return _normalize(text, stamps)


def _classes(mapping: dict[bytes, bytes]) -> bytes:
    """A ``bytes.translate`` table sending each listed byte to its class and all others to '.'."""
    table = bytearray(b"." * 256)
    for members, cls in mapping.items():
        for byte in members:
            table[byte] = cls[0]
    return bytes(table)


# Prechecks: one C-speed ``bytes.translate`` to character classes, then
# substring tests that each pattern needs to match (a timestamp needs "0000-00-00" or
# "0:00:00" in digit classes, a hex id seven hex characters in a row, ...). About 5% of
# texts hold a match for any one pattern, so most passes are skipped. Substitutions only
# put placeholders in, whose characters cannot complete any of these substrings, so
# testing the text once before the first substitution is enough.
# "µ" is C2 B5 in UTF-8: its lead byte counts as a unit letter ("3µs").
_DIGITS_SEPS = _classes({b"0123456789": b"0", b":": b":", b"-": b"-", b" ": b" ", b"mnush\xc2": b"u"})
_HEXES = _classes({b"0123456789abcdefABCDEF": b"x", b"-": b"-"})


def _normalize(text: str, stamps: re.Pattern[str] = _TIMESTAMP) -> str:
    # Whitespace is collapsed first so that the patterns see what a second pass would see
    # ("3\nsec" and "3 sec" are the same duration): normalization is idempotent.
    text = " ".join(text.split())
    raw = text.encode("utf-8", "surrogatepass")
    seps = raw.translate(_DIGITS_SEPS)
    hexes = raw.translate(_HEXES)
    if b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in hexes:
        text = _UUID.sub("<uuid>", text)
    if b"0" in seps:  # every pattern below but the temp path needs a digit ("0x" has one)
        if b"0000-00-00" in seps or b"0:00:00" in seps:
            text = stamps.sub("<ts>", text)
        if b"xxxxxxx" in hexes or "0x" in text:
            text = _HEX.sub("<hex>", text)
        if "/tmp/" in text or "/var/" in text:
            text = _TMP_PATH.sub("<tmp>", text)
        if b"0u" in seps or b"0 u" in seps:  # a digit, then a unit's first letter
            text = _DURATION.sub("<dur>", text)
        if "ine " in text or "lineno" in text or (b":0" in seps and b"0:" in seps):
            text = _LINE_NO.sub("<n>", text)
    elif "/tmp/" in text or "/var/" in text:
        text = _TMP_PATH.sub("<tmp>", text)
    return text


def normalize_loose(text: str) -> str:
    """:func:`normalize` plus every remaining number masked (for near-duplicate detection)."""
    return _NUMBER.sub("#", normalize(text))


def observation_fingerprint(observation: str | None) -> tuple[int, int]:
    """The (digest, SimHash) pair of an observation, normalizing it once."""
    text = observation or ""
    memo = len(text) <= _MEMO_CHARS
    if memo:
        cached = _OBS_MEMO.get(text)
        if cached is not None:
            return cached
    normalized = normalize(text)
    exact = digest(normalized)
    # An output without a word (``76.0``, ``[3, 4]``) is all numbers, and numbers are what SimHash
    # ignores: two such outputs are near-identical only when they are identical.
    result = exact, simhash_normalized(normalized) if _LETTER.search(normalized) else exact
    if memo:
        _remember(_OBS_MEMO, text, result)
    return result


def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
    if len(memo) >= _MEMO_MAX:
        # A blunt reset keeps memory bounded; repeats are mostly recent, so it refills fast.
        memo.clear()
    memo[key] = value


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


def action_digest(tool: str | None, args: dict[str, Any] | None, rendered: str | None = None) -> int:
    """Digest of (tool, normalized args): equal for the same action with volatile parts masked.

    ``rendered``, when given, is ``render_args(args)`` already computed by the caller.
    """
    if rendered is None:
        rendered = render_args(args)
    return action_digests(tool, rendered)[0]


def action_digests(tool: str | None, rendered: str) -> tuple[int, int]:
    """The action's exact digest (see :func:`action_digest`) and its digest with lone numbers masked.

    The second is equal for "the same action apart from numbers" (DESIGN §4): ``goto 120`` and
    ``goto 164``, an edit at a line number that shifts each time. Numbers inside names
    (``test_2``, ``HAT030``) are kept. Both come from one normalization, memoized together.
    """
    key = f"{tool or ''}\x1f{rendered}"
    memo = len(key) <= _MEMO_CHARS
    if memo:
        cached = _ACTION_MEMO.get(key)
        if cached is not None:
            return cached
    normalized = normalize(rendered, dates=False)
    exact = digest(f"{tool or ''}\x1f{normalized}")
    # Numbers are masked where an action says where it acts (``goto 120``, ``edit 41:43``, ``sed -n 1,40p``):
    # its head. Past that (a heredoc's script) a number is content, and long texts cost no more.
    masked = _LONE_NUMBER.sub("#", normalized[:_ACTION_HEAD]) + normalized[_ACTION_HEAD:]
    # Compared only within a short span of one run: 32 bits of CRC (a tenth of blake2b's cost) suffice.
    value = exact, zlib.crc32(f"{tool or ''}\x1f{masked}".encode("utf-8", "surrogatepass")) or 1
    if memo:
        _remember(_ACTION_MEMO, key, value)
    return value


def observation_digest(observation: str | None) -> int:
    """Digest of the normalized observation (empty and missing observations are equal)."""
    return digest(normalize(observation or ""))


def _token_hash(token: str | bytes) -> bytes:
    """The token's 64-bit hash as 8 little-endian bytes (joined and read by numpy at C speed)."""
    cached = _TOKEN_CACHE.get(token)
    if cached is None:
        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_MAX:
            # A blunt reset keeps memory bounded; tokens repeat heavily, so it refills fast.
            _TOKEN_CACHE.clear()
        data = token if isinstance(token, bytes) else token.encode("utf-8", "surrogatepass")
        cached = blake2b(data, digest_size=8).digest()
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
    # Dropping digits is the loose normalization: a line count or a line number changes no
    # token. ASCII text (nearly all) is tokenized as bytes, whose translate and split run
    # several times faster than str's and give the same tokens, hashed the same.
    tokens: Sequence[str | bytes]
    if normalized.isascii():
        tokens = normalized.encode("ascii").translate(None, _DIGIT_BYTES).split(None, _MAX_TOKENS)[:_MAX_TOKENS]
    else:
        tokens = normalized.translate(_DROP_DIGITS).split(None, _MAX_TOKENS)[:_MAX_TOKENS]
    if not tokens:
        return 0
    found = list(map(_TOKEN_CACHE.get, tokens))
    if None in found:
        parts = [_token_hash(tokens[k]) if v is None else v for k, v in enumerate(found)]
    else:
        parts = cast("list[bytes]", found)  # no misses: every item is a hash
    hashes: npt.NDArray[np.uint64] = np.frombuffer(b"".join(parts), dtype=_LE_U64)
    if len(hashes) > 1:
        # Bigrams keep some order information; rotating the right token makes (a, b) != (b, a).
        # In-place steps: each numpy call costs about as much as the arithmetic on 256 items.
        tail = hashes[1:]
        right = tail << _ONE
        right |= tail >> _SIXTY_THREE
        hashes = hashes[:-1] * _SHINGLE_MULT
        hashes ^= right
    return _vote(hashes)


def _vote(hashes: npt.NDArray[np.uint64]) -> int:
    bits = np.unpackbits(hashes.view(np.uint8)).reshape(-1, 64)
    # Counting the ones per bit as a product with a vector of ones is faster for long
    # inputs; float32 counts are exact up to 2**24.
    ones = _ONES[: len(hashes)] @ bits if len(hashes) >= _MATMUL_FROM else bits.sum(axis=0, dtype=np.int32)
    packed = np.packbits(ones > len(hashes) / 2)
    return int.from_bytes(packed.tobytes(), "big") & _MASK64


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit fingerprints."""
    return (a ^ b).bit_count()


def short(text: str | None, limit: int = 60) -> str:
    """One line of ``text`` for evidence: whitespace collapsed, cut to ``limit`` characters."""
    text = text or ""
    # Collapsing a prefix gives a prefix of the collapsed whole, so when the prefix alone is
    # long enough the rest of a long observation need not be scanned (this runs per action).
    head = " ".join(text[: 4 * limit].split())
    flat = head if len(head) > limit or len(text) <= 4 * limit else " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


__all__ = [
    "action_digest",
    "action_digests",
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
