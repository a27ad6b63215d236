"""Every script in examples/ runs to the outcome it promises (exit status 0), on its own embedded server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
async def test_example_reaches_its_expected_outcome(script: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def test_there_are_examples() -> None:
    assert EXAMPLES
