"""The tools the scripted agents call, served by a ``ToolExecutor`` (``runvisor tools runvisor.actors.sim:demo_tools``).

A small fake repository to search and read, an edit that grows the file it patches, a flaky
upstream, an API whose "successful" answers carry an error, and a long job an operator may kill.
"""

from __future__ import annotations

import asyncio
import itertools

from runvisor import BackoffPolicy, BreakerPolicy, ToolPolicy, ToolRegistry

demo_tools = ToolRegistry()

SOURCE: dict[str, list[str]] = {
    f"src/parser_{i}.py": [f"def parse_{i}_{j}(text): return text.split({j})" for j in range(60)] for i in range(4)
}
_patched: dict[str, int] = {}
_inventory_requests = itertools.count(1)


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def search(term: str) -> str:
    """grep the demo repository for ``term``."""
    hits = [f"{path}:{n + 1}: {line}" for path, lines in SOURCE.items() for n, line in enumerate(lines) if term in line]
    return "\n".join(hits[:20]) if hits else f'No matches found for "{term}" in /repo/src'


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def read_file(path: str, start: int = 1, end: int = 20) -> str:
    """Page through a file of the demo repository."""
    if path not in SOURCE:
        return f"Error: {path}: No such file or directory"
    return "\n".join(f"{n}: {line}" for n, line in enumerate(SOURCE[path][start - 1 : end], start=start))


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def wc(path: str) -> str:
    """Count a file's lines, as ``wc -l`` prints them: the count, then the path."""
    return f"{len(SOURCE.get(path, []))} {path}"


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def apply_patch(path: str, patch_id: str) -> str:
    """Apply a patch: the same edit applied again makes the file grow again."""
    _patched[path] = _patched.get(path, len(SOURCE.get(path, []))) + 3
    return f"patch {patch_id} applied to {path}: now {_patched[path]} lines (+3)"


@demo_tools.tool(
    policy=ToolPolicy(
        timeout_s=5, max_attempts=4, backoff=BackoffPolicy(base_s=0.02, cap_s=0.1),
        # The breaker is not what this tool shows: it would cut the storm short.
        breaker=BreakerPolicy(window=64, min_calls=64, failure_rate=1.0),
    )
)  # fmt: skip
async def inventory_api(sku: str) -> str:
    """A flaky upstream: three of every four requests fail with a connection reset (retried by the executor)."""
    if next(_inventory_requests) % 4:
        raise ConnectionError("connection reset by peer")
    return f"{sku}: 12 in stock"


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def quota_api(query: str) -> dict[str, object]:
    """Answers 'successfully' with an error inside: a hidden failure."""
    return {"ok": False, "error": f"quota exceeded for {query!r}", "data": None}


@demo_tools.tool(policy=ToolPolicy(timeout_s=60, max_attempts=1))
async def slow_job(seconds: float) -> str:
    """A long external action (an operator may kill the run meanwhile)."""
    await asyncio.sleep(seconds)
    return f"job finished after {seconds}s"


__all__ = ["SOURCE", "demo_tools"]
