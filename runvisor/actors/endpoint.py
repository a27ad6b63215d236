"""Where the NATS server is and how each role logs in to it.

Two sources, in this order:

1. ``NATS_URL`` set: an existing deployment. The role's password comes from
   ``RV_<ROLE>_PASSWORD``, its user from ``RV_<ROLE>_USER`` (default: the role's name; a
   deployment with several tenants names each tenant's users apart), or ``NATS_USER``/
   ``NATS_PASSWORD`` for every role, or ``NATS_CREDS`` for a creds file; nothing is started.
2. Otherwise the embedded server that ``runvisor up`` started: its URL and the generated
   role passwords are read from the data directory (``$RUNVISOR_HOME``, default
   ``~/.runvisor``), where ``runvisor.actors.server`` wrote them with mode 0600.

Either way a role's connection takes its replies on its own inbox prefix (``_INBOX_<role>``),
the only one its user may subscribe to (``roles.conf``): no role reads another's replies.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runvisor.errors import EndpointError
from runvisor.protocols.subjects import inbox_prefix

Role = Literal["agent", "tool", "supervisor", "operator", "admin"]
ROLES: tuple[Role, ...] = ("agent", "tool", "supervisor", "operator", "admin")

CREDENTIALS_FILE = "credentials.json"
SERVER_FILE = "server.json"


def default_home() -> Path:
    return Path(os.environ.get("RUNVISOR_HOME") or Path.home() / ".runvisor")


def password_env(role: Role) -> str:
    return f"RV_{role.upper()}_PASSWORD"


def user_env(role: Role) -> str:
    return f"RV_{role.upper()}_USER"


@dataclass(frozen=True)
class Endpoint:
    """How one role connects: URL plus user and password (or a creds file), and its inbox prefix."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    #: Where the connection takes its replies (``_INBOX_<role>``); None: nats-py's ``_INBOX``.
    inbox_prefix: str | None = None

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        # ``nats://a:4222,nats://b:4222`` (the nats CLI's form) is a cluster's seed list: any node will do.
        servers = [url.strip() for url in self.url.split(",") if url.strip()]
        options: dict[str, Any] = {"servers": servers}
        if self.creds_file:
            options["user_credentials"] = self.creds_file
        elif self.user:
            options["user"] = self.user
            options["password"] = self.password
        if self.inbox_prefix:
            options["inbox_prefix"] = self.inbox_prefix
        return options

    @classmethod
    def discover(cls, role: Role, home: Path | None = None) -> Endpoint:
        """The endpoint for ``role`` from the environment or the embedded server's data dir."""
        url = os.environ.get("NATS_URL")
        inbox = inbox_prefix(role)
        if url:
            if creds := os.environ.get("NATS_CREDS"):
                return cls(url=url, creds_file=creds, inbox_prefix=inbox)
            role_pw = os.environ.get(password_env(role))
            if role_pw:
                user = os.environ.get(user_env(role)) or role
                return cls(url=url, user=user, password=role_pw, inbox_prefix=inbox)
            shared_user, shared_password = os.environ.get("NATS_USER"), os.environ.get("NATS_PASSWORD")
            return cls(url=url, user=shared_user, password=shared_password, inbox_prefix=inbox)
        home = home or default_home()
        server_file = home / SERVER_FILE
        if not server_file.exists():
            raise EndpointError(
                f"no NATS server found: {server_file} does not exist. Start one with `runvisor up`, "
                "or set NATS_URL (and RV_<ROLE>_PASSWORD or NATS_USER/NATS_PASSWORD) for an existing one."
            )
        url = json.loads(server_file.read_text())["url"]
        return Credentials.load_or_create(home).endpoint(url, role)


def _new_password() -> str:
    # nats.conf parses an environment variable's value like a config value: one starting with a
    # digit or '-' is read as a number and breaks the server's start. A letter prefix and hex keep
    # it a plain string, with 192 bits of randomness.
    return "rv" + secrets.token_hex(24)


@dataclass(frozen=True)
class Credentials:
    """Generated role passwords, kept in ``<home>/credentials.json`` (mode 0600)."""

    passwords: dict[Role, str]

    @classmethod
    def load_or_create(cls, home: Path) -> Credentials:
        path = home / CREDENTIALS_FILE
        if path.exists():
            stored = json.loads(path.read_text())
            missing = [role for role in ROLES if role not in stored]
            if not missing:
                return cls(passwords={role: stored[role] for role in ROLES})
            stored.update({role: _new_password() for role in missing})
        else:
            stored = {role: _new_password() for role in ROLES}
        home.mkdir(parents=True, exist_ok=True)
        # Create with 0600 from the start, so the secret is never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(stored, out, indent=2)
        os.chmod(path, 0o600)
        return cls(passwords={role: stored[role] for role in ROLES})

    def environment(self) -> dict[str, str]:
        """The variables ``nats.conf`` reads the passwords from."""
        return {password_env(role): pw for role, pw in self.passwords.items()}

    def endpoint(self, url: str, role: Role) -> Endpoint:
        return Endpoint(url=url, user=role, password=self.passwords[role], inbox_prefix=inbox_prefix(role))
