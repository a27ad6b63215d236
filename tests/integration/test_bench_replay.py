"""One small end-to-end replay: real server, a real supervisor worker process, real decisions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


async def _run(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(180)
async def test_replay_reports_throughput_and_the_loops_it_stopped(tmp_path: Path) -> None:
    # Given synthetic traffic with loops and healthy runs, and its labels,
    traffic = tmp_path / "traffic.jsonl"
    rc, _, err = await _run(
        "-m", "bench.synth", "--runs", "12", "--steps", "20", "--mix", "healthy=0.5,loop=0.5",
        "--seed", "7", "--out", str(traffic),
    )  # fmt: skip
    assert rc == 0, err
    labels = [json.loads(line) for line in (tmp_path / "traffic.jsonl.labels.jsonl").read_text().splitlines()]
    loops = {r["run_id"] for r in labels if r["label"] == "loop"}
    # when it is replayed through a supervisor worker process at a fixed rate,
    verdicts = tmp_path / "verdicts.jsonl"
    rc, out, err = await _run(
        "-m", "bench.replay", str(traffic), "--rate", "3000", "--workers", "1", "--json", "--verdicts", str(verdicts)
    )  # fmt: skip
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    # then every event was processed, and the report has the figures the bench writes down,
    assert result["events"] == sum(r["n_events"] for r in labels)
    assert result["runs"] == 12
    assert result["events_per_s"] > 0
    assert result["latency_ms_p50"] is not None
    # and decisions name the recorded run ids (not the replay's renamed ones).
    decided = {json.loads(line)["run_id"] for line in verdicts.read_text().splitlines()}
    assert decided, "the loops were stopped"
    assert decided <= {r["run_id"] for r in labels}
    assert len(decided & loops) >= len(loops) - 1
    assert not decided - loops, "no healthy run was stopped"
    assert result["decisions_by_reason"].get("LOOP_DETECTED", 0) >= 1


async def test_replay_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    rc, _, err = await _run("-m", "bench.replay", str(tmp_path / "nope.jsonl"))
    assert rc == 2
    assert "no such file" in err
    assert "Traceback" not in err
