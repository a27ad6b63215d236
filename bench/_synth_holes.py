"""Rabbit holes, for ``bench.synth`` (DESIGN §4): environment set-up in which every command is new and
fails the same way, and edit-rerun cycles on a stand-in script that give the same error every few actions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from bench._synth_workspace import NOUNS, VERBS, Action, Workspace, shell

# --- env_hole ----------------------------------------------------------------------------------------


def loop_env_hole(ws: Workspace) -> tuple[Iterator[Action], int]:
    """Environment set-up in which every command is new and each fails the same way: pip or conda
    with other mirrors and flags, apt-get after mirror swaps, or JAVA_HOME and JDK paths before a
    Maven build, all ending in the same error (the sandbox has no network)."""
    r = ws.rng
    maker = r.choice((_pip_offline, _conda_offline, _apt_offline, _maven_offline))
    commands, answer = maker(ws)
    r.shuffle(commands)
    return (answer(c) for c in itertools.cycle(commands)), 8  # new commands until the variants run out


_ANSWER = Callable[[str], Action]


def _pip_offline(ws: Workspace) -> tuple[list[str], _ANSWER]:
    r = ws.rng
    spec = r.choice(("lxml", "pyarrow==12.0.1", "psycopg2-binary", "numpy==1.21.6", "torch==1.13.1", "scipy==1.7.3"))
    installers = ("pip install", "pip3 install", "python -m pip install", "python3 -m pip install",
                  "pip install --user")  # fmt: skip
    flags = ("", "--no-cache-dir", "--default-timeout=100", "--retries 10", "--prefer-binary", "--upgrade",
             "--proxy http://127.0.0.1:3128", "--no-deps", "--only-binary=:all:", "--timeout 60")  # fmt: skip
    mirrors = ("", "-i https://pypi.tuna.tsinghua.edu.cn/simple", "-i https://mirrors.aliyun.com/pypi/simple/",
               "--index-url https://pypi.org/simple",
               "-i https://pypi.douban.com/simple --trusted-host pypi.douban.com",
               "--extra-index-url https://download.pytorch.org/whl/cpu",
               "-i https://repo.huaweicloud.com/repository/pypi/simple")  # fmt: skip
    commands = [" ".join(filter(None, (i, f, spec, m))) for i in installers for f in flags for m in mirrors]
    name = spec.split("=")[0]

    def answer(command: str) -> Action:
        warnings = "\n".join(
            f"WARNING: Retrying (Retry(total={left}, connect=None, read=None, redirect=None, status=None)) after "
            f"connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
            f"0x7f{r.getrandbits(40):010x}>: Failed to establish a new connection: [Errno -3] Temporary failure in "
            f"name resolution')': /simple/{name}/"
            for left in (1, 0)
        )
        error = (f"ERROR: Could not find a version that satisfies the requirement {spec} (from versions: none)\n"
                 f"ERROR: No matching distribution found for {spec}")  # fmt: skip
        return shell(command, f"{warnings}\n{error}", rc=1)

    return commands, answer


def _conda_offline(ws: Workspace) -> tuple[list[str], _ANSWER]:
    spec = ws.rng.choice(("gdal", "pygraphviz", "libxml2=2.9", "cartopy", "rdkit", "hdf5=1.12"))
    channels = ("-c conda-forge", "-c anaconda", "-c defaults", "--override-channels -c conda-forge",
                "-c conda-forge/label/main", "-c bioconda -c conda-forge")  # fmt: skip
    flags = ("", "--freeze-installed", "--no-update-deps", "--solver=classic", "--solver=libmamba",
             "--no-channel-priority", "--strict-channel-priority")  # fmt: skip
    forms = ("conda install -y {c} {f} {s}", "conda create -y -n fix python=3.9 {s} {c} {f}")
    commands = [" ".join(form.format(c=c, f=f, s=spec).split()) for form in forms for c in channels for f in flags]

    def answer(command: str) -> Action:
        channel = command.rsplit(" -c ", 1)[-1].split(maxsplit=1)[0]  # the last channel named is asked first
        url = f"https://conda.anaconda.org/{channel}"
        url = "https://repo.anaconda.com/pkgs/main" if channel == "defaults" else url
        return shell(command, "Collecting package metadata (current_repodata.json): failed\n\nCondaHTTPError: HTTP 000 "
                              f"CONNECTION FAILED for url <{url}/linux-64/current_repodata.json>\nElapsed: -\n\n"
                              "An HTTP error occurred when trying to retrieve this URL.\nHTTP errors are often "
                              "intermittent, and a simple retry will get you on your way.", rc=1)  # fmt: skip

    return commands, answer


def _apt_offline(ws: Workspace) -> tuple[list[str], _ANSWER]:
    package = ws.rng.choice(("openjdk-17-jdk", "libpq-dev", "graphviz-dev", "build-essential", "libxml2-dev"))
    mirrors = ("", "mirrors.aliyun.com", "mirror.math.princeton.edu/pub", "ftp.ubuntu.com", "mirrors.edge.kernel.org",
               "us.archive.ubuntu.com", "mirrors.tuna.tsinghua.edu.cn")  # fmt: skip
    installs = (f"apt-get install -y {package}", f"apt-get install -y --no-install-recommends {package}",
                f"apt-get install -y --fix-missing {package}", f"apt-get -o Acquire::Retries=5 install -y {package}",
                f"DEBIAN_FRONTEND=noninteractive apt-get install -yq {package}",
                f"apt-get -o Acquire::http::Timeout=60 install -y {package}",
                f"apt-get install -y --allow-unauthenticated {package}")  # fmt: skip
    hosts: dict[str, str] = {}
    for mirror in mirrors:
        swap = f"sed -i 's|http://archive.ubuntu.com|http://{mirror}|g' /etc/apt/sources.list && " if mirror else ""
        host = mirror.split("/")[0] or "archive.ubuntu.com"
        hosts |= {f"{swap}apt-get update && {i}": host for i in installs}
        hosts |= {} if mirror else dict.fromkeys(installs, host)
    commands = list(hosts)

    def answer(command: str) -> Action:
        host = hosts[command]
        update = (
            f"Err:1 http://{host}/ubuntu jammy InRelease\n  Temporary failure resolving '{host}'\nReading package "
            f"lists...\nW: Failed to fetch http://{host}/ubuntu/dists/jammy/InRelease  Temporary failure resolving "
            f"'{host}'\nW: Some index files failed to download. They have been ignored, or old ones used instead.\n"
            if "update" in command
            else ""
        )
        return shell(command, f"{update}Reading package lists...\nBuilding dependency tree...\nReading state "
                              f"information...\nE: Unable to locate package {package}", rc=100)  # fmt: skip

    return commands, answer


def _maven_offline(ws: Workspace) -> tuple[list[str], _ANSWER]:
    homes = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-17-openjdk", "/usr/lib/jvm/temurin-17-jdk-amd64",
             "/opt/java/openjdk", "/usr/lib/jvm/default-java", "/usr/lib/jvm/java-11-openjdk-amd64",
             "$(dirname $(dirname $(readlink -f $(which java))))", "/usr/local/openjdk-17")  # fmt: skip
    builds = ("mvn -q compile", "mvn -B -q test -DskipTests", "mvn clean install -DskipTests -q",
              "mvn -Dmaven.wagon.http.retryHandler.count=3 compile", "./mvnw -q compile")  # fmt: skip
    forms = ("export JAVA_HOME={h} && {b}", "JAVA_HOME={h} {b}", "export JAVA_HOME={h} PATH={h}/bin:$PATH && {b}")
    commands = [form.format(h=h, b=b) for form in forms for h in homes for b in builds]
    plugin = "org.apache.maven.plugins:maven-compiler-plugin:3.11.0"

    def answer(command: str) -> Action:
        return shell(command, f"[ERROR] Plugin {plugin} or one of its dependencies could not be resolved: Failed to "
                              f"read artifact descriptor for {plugin.replace(':3.', ':jar:3.')}: Could not transfer "
                              "artifact from/to central (https://repo.maven.apache.org/maven2): repo.maven.apache.org: "
                              "Temporary failure in name resolution -> [Help 1]\n[ERROR] \n[ERROR] To see the full "
                              "stack trace of the errors, re-run Maven with the -e switch.\n[ERROR] Re-run Maven using "
                              "the -X switch to enable full debug logging.", rc=1)  # fmt: skip

    return commands, answer


# --- rerun_rhythm ------------------------------------------------------------------------------------


def loop_rerun_rhythm(ws: Workspace) -> tuple[Iterator[Action], int]:
    """Edit-rerun cycles on a stand-in script: every edit is new and succeeds, and every 2-4 actions
    the script is run again and fails with the same error, for the rest of the run."""
    return _rerun_rhythm(ws), 12


def _rerun_rhythm(ws: Workspace) -> Iterator[Action]:
    r = ws.rng
    script = r.choice((f"debug_{ws.noun}.py", f"test_{ws.func}.py", "repro.py", f"check_{ws.noun}s.py"))
    mod, other = (f.rsplit("/", 1)[1][:-3] for f in r.sample(ws.files, 2))
    error = r.choice((
        f'Traceback (most recent call last):\n  File "/testbed/{script}", line 1, in <module>\n    from {ws.pkg}.{mod} '
        f'import {ws.func}\n  File "/testbed/src/{ws.pkg}/{mod}.py", line 12, in <module>\n    from .{other} import '
        f'{ws.cls}\n  File "/testbed/src/{ws.pkg}/{other}.py", line 5, in <module>\n    from .{mod} import {ws.func}\n'
        f"ImportError: cannot import name '{ws.func}' from partially initialized module '{ws.pkg}.{mod}' (most likely "
        f"due to a circular import) (/testbed/src/{ws.pkg}/{mod}.py)",
        f'Traceback (most recent call last):\n  File "/testbed/{script}", line 1, in <module>\n    from {ws.pkg} '
        f'import {ws.cls}\n  File "/testbed/src/{ws.pkg}/__init__.py", line 3, in <module>\n    from ._speedups '
        f"import {ws.func}\nModuleNotFoundError: No module named '{ws.pkg}._speedups'",
        f'Traceback (most recent call last):\n  File "/testbed/{script}", line {r.randint(4, 9)}, in <module>\n    '
        f'result = {ws.cls}().{ws.func}(data)\n  File "/testbed/src/{ws.pkg}/{mod}.py", line {r.randint(40, 300)}, in '
        f"{ws.func}\n    for {ws.noun} in self.{ws.noun}s:\nAttributeError: 'NoneType' object has no attribute "
        f"'{ws.noun}s'",
    ))  # fmt: skip
    body = [f"from {ws.pkg} import {ws.cls}", "", f"data = {ws.arg}", f"print({ws.cls}().{ws.func}(data))"]
    yield shell(f"cat <<'EOF' > {script}\n" + "\n".join(body) + "\nEOF", "")
    run = shell(f"python {script}", error, rc=1)

    def edit() -> Action:
        form = r.random()
        if form < 0.35:
            return ws.edit()  # the library itself
        if form < 0.55:
            extra = r.choice(("print(type(data), data)", f"print({ws.cls}.__mro__)", "import sys; print(sys.path)",
                              f"print({ws.cls}().__dict__)", f"print(repr(data), {r.randint(1, 9)})",
                              f"print('step {r.randint(1, 20)}')"))  # fmt: skip
            body.append(extra)
            return shell(f'echo "{extra}" >> {script}', "")
        if form < 0.8:
            i = r.randrange(1, len(body))  # line 1, the import that fails, stays
            body[i] = r.choice((f"data = {r.choice(('[]', 'None', '{}', '[1, 2, 3]', '0', '[[1], [2, 3]]'))}",
                                f"import {ws.pkg}.{r.choice((mod, other))}", f"from {ws.pkg}.{mod} import {ws.func}",
                                f"# {r.choice(VERBS)} {r.choice(NOUNS)} {r.randint(1, 99)}"))  # fmt: skip
            return shell(f"sed -i '{i + 1}s/.*/{body[i]}/' {script}", "")
        where = r.choice(("", "/" + ws.pkg, "/" + mod))
        body[:] = [body[0], "import sys", f"sys.path.insert(0, '/testbed/src{where}')", *body[1:][-r.randint(1, 3) :]]
        return shell(f"cat <<'EOF' > {script}\n" + "\n".join(body) + "\nEOF", "")

    used: set[str] = set()
    while True:
        yield run
        for _ in range(r.randint(1, 3)):
            for _ in range(50):
                action = edit()
                if action.command not in used:
                    break
            used.add(action.command)
            yield action


__all__ = ["loop_env_hole", "loop_rerun_rhythm"]
