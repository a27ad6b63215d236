"""runvisor as a user installs it: the wheel, in a fresh virtual environment outside the checkout.

The editable install in the checkout hides what a wheel lacks (the server configuration was
once read from the source tree), so this builds the wheel, installs it into a new venv, and
runs the product from another directory.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: Run in the installed interpreter: the import names the wheel put into site-packages.
TOP_LEVEL_NAMES = """
import importlib.metadata as md
files = md.files("runvisor") or []
print(sorted({f.parts[0] for f in files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}))
"""

#: Run in the installed interpreter: what an agent developer imports.
PUBLIC_API = """
from runvisor import ConnectError, Policy, Run, RunKilled, RunStopped, RunvisorError, StopReason, ToolRegistry
from runvisor.actors.server import CONF_PATH
assert CONF_PATH.is_file(), CONF_PATH
assert (CONF_PATH.parent / "roles.conf").is_file(), "nats.conf includes roles.conf"
assert "site-packages" in str(CONF_PATH), CONF_PATH
print("ok", Run.__module__, CONF_PATH.name)
"""


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, stdin=None
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the checkout) with the wheel built from the checkout installed in it."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    build = _run(sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", dist, cwd=tmp)
    assert build.returncode == 0, build.stderr
    assert "Warning:" not in build.stderr, "the build warns (a Python warning class, not pip's own WARNING)"
    wheels = list(dist.glob("runvisor-*.whl"))
    assert len(wheels) == 1, wheels
    env = tmp / "venv"
    venv.create(env, with_pip=True)
    install = _run(env / "bin" / "python", "-m", "pip", "install", "-q", wheels[0], cwd=tmp, timeout=600)
    assert install.returncode == 0, install.stderr
    return env


@pytest.mark.timeout(900)
def test_the_wheel_installs_runvisor_and_nothing_else_at_top_level(installed: Path, tmp_path: Path) -> None:
    names = _run(installed / "bin" / "python", "-c", TOP_LEVEL_NAMES, cwd=tmp_path)
    assert names.returncode == 0, names.stderr
    assert names.stdout.strip() == "['runvisor']"


@pytest.mark.timeout(900)
def test_the_public_api_imports_from_anywhere(installed: Path, tmp_path: Path) -> None:
    api = _run(installed / "bin" / "python", "-c", PUBLIC_API, cwd=tmp_path)
    assert api.returncode == 0, api.stderr
    assert api.stdout.startswith("ok runvisor.actors.agent"), api.stdout


@pytest.mark.timeout(900)
def test_runvisor_demo_runs_from_another_directory(installed: Path, tmp_path: Path) -> None:
    demo = _run(installed / "bin" / "runvisor", "demo", cwd=tmp_path, timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "every run ended as expected" in demo.stdout
    assert "Traceback" not in demo.stderr


@pytest.mark.timeout(900)
def test_a_mistyped_command_is_one_clear_line(installed: Path, tmp_path: Path) -> None:
    typo = _run(installed / "bin" / "runvisor", "puase", "run-1", cwd=tmp_path)
    assert typo.returncode == 2
    assert "Traceback" not in typo.stderr
    assert "unknown command 'puase'; did you mean 'pause'?" in typo.stderr
