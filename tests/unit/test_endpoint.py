"""Finding the server and the role's credentials: environment first, then the data dir."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from runvisor.actors.endpoint import ROLES, Credentials, Endpoint
from runvisor.errors import EndpointError


def test_credentials_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = Credentials.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert set(first.passwords) == set(ROLES)
    assert len(set(first.passwords.values())) == len(ROLES)
    assert Credentials.load_or_create(tmp_path) == first


def test_nats_url_wins_and_uses_the_role_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NATS_URL", "nats://nats.internal:4222")
    monkeypatch.setenv("RV_SUPERVISOR_PASSWORD", "s3cret")
    endpoint = Endpoint.discover("supervisor", home=tmp_path)
    assert endpoint.connect_options() == {
        "servers": ["nats://nats.internal:4222"],
        "user": "supervisor",
        "password": "s3cret",
        "inbox_prefix": "_INBOX_supervisor",
    }


def test_a_comma_separated_nats_url_is_a_cluster_seed_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # nats-py refused "nats://a,nats://b" ("invalid connect url option"), the form the nats CLI takes.
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://127.0.0.1:4224")
    endpoint = Endpoint.discover("agent", home=tmp_path)
    assert endpoint.connect_options()["servers"] == [
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1:4223",
        "nats://127.0.0.1:4224",
    ]


def test_a_tenants_user_is_named_per_role(monkeypatch: pytest.MonkeyPatch) -> None:
    # One NATS account per tenant, and user names are unique across accounts: team-a-agent, ...
    monkeypatch.setenv("NATS_URL", "nats://nats.internal:4222")
    monkeypatch.setenv("RV_AGENT_USER", "team-a-agent")
    monkeypatch.setenv("RV_AGENT_PASSWORD", "s3cret")
    endpoint = Endpoint.discover("agent")
    assert (endpoint.user, endpoint.inbox_prefix) == ("team-a-agent", "_INBOX_agent")


def test_each_role_takes_its_replies_on_its_own_inbox_prefix(tmp_path: Path) -> None:
    # roles.conf lets each role subscribe only to _INBOX_<role>.>: nobody reads another role's replies.
    credentials = Credentials.load_or_create(tmp_path)
    for role in ROLES:
        assert credentials.endpoint("nats://x", role).connect_options()["inbox_prefix"] == f"_INBOX_{role}"


def test_nats_creds_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://nats.internal:4222")
    monkeypatch.setenv("NATS_CREDS", "/etc/nats/agent.creds")
    assert Endpoint.discover("agent").connect_options()["user_credentials"] == "/etc/nats/agent.creds"


def test_no_server_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    with pytest.raises(EndpointError, match=r"runvisor up.*NATS_URL"):
        Endpoint.discover("operator", home=tmp_path)


def test_password_is_not_in_repr() -> None:
    assert "hunter2" not in repr(Endpoint(url="nats://x", user="agent", password="hunter2"))
