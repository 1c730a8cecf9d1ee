"""Authentication, authorization, signatures, address allowlists, limits and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from werkzeug.test import Client

from procgate import ConfigError, Gate, JobStore, MemoryStore, ThreadRunner
from procgate.auth import (
    client_address,
    hash_token,
    make_token,
    parse_networks,
    require_address,
)
from procgate.errors import Forbidden
from procgate.jobs import Job
from tests.conftest import refused, wait_for

CI, OPS, ADMIN, VIEWER = "ci-secret", "ops-secret", "admin-secret", "viewer-secret"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate(
        runner=ThreadRunner(),
        tokens=[
            make_token("ci", hash_token(CI), commands=["echo", "sleep"]),
            make_token("ops", hash_token(OPS)),
            make_token("admin", hash_token(ADMIN), admin=True),
            make_token("viewer", hash_token(VIEWER), read_only=True, admin=True),
        ],
        allow_programs=["echo"],
    )
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    gate.register("secret", ["true"])
    gate.register("hook", ["cat"], hmac_secret="hooksecret", webhook=True)
    gate.register("signed", ["echo"], hmac_secret="s2")
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


@pytest.mark.docs("http-api.md#get-health")
def test_health_needs_no_token(client: Client) -> None:
    """Load balancers can check health without credentials."""
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Y2k6eA=="}, bearer("")],
)
@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#bearer-tokens", "security.md#401-403-and-404")
def test_missing_or_bad_token_is_401(client: Client, headers: dict[str, str]) -> None:
    """No token or a wrong one: 401 with WWW-Authenticate, for every endpoint."""
    for method, path in (("GET", "/commands"), ("POST", "/commands/echo"), ("GET", "/jobs")):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#bearer-tokens", "security.md#401-403-and-404")
def test_token_limited_to_commands(client: Client, gate: Gate) -> None:
    """A token runs only its commands (403 otherwise, and nothing is created) and lists
    only those."""
    ok = client.post("/commands/echo", json={"args": ["x"], "wait": True}, headers=bearer(CI))
    assert ok.status_code == 200
    refused(
        gate.store,
        403,
        "forbidden",
        lambda: client.post("/commands/secret", json={}, headers=bearer(CI)),
    )
    names = {c["name"] for c in client.get("/commands", headers=bearer(CI)).json["commands"]}
    assert names == {"echo", "sleep"}
    assert client.get("/commands/secret", headers=bearer(CI)).status_code == 404
    assert (
        client.post("/commands/secret", json={"wait": True}, headers=bearer(OPS)).status_code == 200
    )


@pytest.mark.docs("http-api.md#authentication", "http-api.md#get-jobsid")
@pytest.mark.docs("security.md#bearer-tokens", "security.md#401-403-and-404")
def test_jobs_are_private_to_their_token(client: Client) -> None:
    """A token sees and cancels only its own jobs; an admin sees all."""
    mine = client.post("/commands/sleep", json={"args": ["30"]}, headers=bearer(CI)).json["id"]
    other = client.post("/commands/echo", json={"wait": True}, headers=bearer(OPS)).json["id"]
    assert [j["id"] for j in client.get("/jobs", headers=bearer(CI)).json["jobs"]] == [mine]
    assert client.get(f"/jobs/{other}", headers=bearer(CI)).status_code == 404
    assert client.get(f"/jobs/{other}/stdout", headers=bearer(CI)).status_code == 404
    assert client.get(f"/jobs/{other}/events", headers=bearer(CI)).status_code == 404
    assert client.delete(f"/jobs/{other}", headers=bearer(CI)).status_code == 404
    assert client.delete(f"/jobs/{mine}", headers=bearer(OPS)).status_code == 404
    listed = {j["id"] for j in client.get("/jobs", headers=bearer(ADMIN)).json["jobs"]}
    assert listed == {mine, other}
    assert client.delete(f"/jobs/{mine}?wait=10", headers=bearer(ADMIN)).status_code == 202


@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#bearer-tokens", "security.md#401-403-and-404")
def test_read_only_token(client: Client, gate: Gate) -> None:
    """A read-only (admin) token reads every job but runs and cancels nothing."""
    job = client.post("/commands/sleep", json={"args": ["30"]}, headers=bearer(CI)).json["id"]
    assert client.get(f"/jobs/{job}", headers=bearer(VIEWER)).status_code == 200
    refused(
        gate.store, 403, "forbidden", lambda: client.delete(f"/jobs/{job}", headers=bearer(VIEWER))
    )
    assert not gate.store.cancel_requested(job)
    refused(
        gate.store,
        403,
        "forbidden",
        lambda: client.post("/commands/echo", json={}, headers=bearer(VIEWER)),
    )
    client.delete(f"/jobs/{job}?wait=10", headers=bearer(CI))


@pytest.mark.docs("http-api.md#authentication")
def test_raw_mode_is_admin_only(client: Client, gate: Gate) -> None:
    """POST /run needs an admin token: another one is a 403 that creates no job."""
    refused(
        gate.store,
        403,
        "forbidden",
        lambda: client.post("/run", json={"args": ["echo"]}, headers=bearer(OPS)),
    )
    response = client.post(
        "/run", json={"args": ["echo", "a"], "wait": True}, headers=bearer(ADMIN)
    )
    assert response.status_code == 200


@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#signed-requests-and-webhooks")
def test_github_webhook(client: Client) -> None:
    """A GitHub-signed webhook needs no token; its raw body is stdin, its event in env."""
    body = json.dumps({"ref": "refs/heads/main", "zen": "Keep it logically awesome."}).encode()
    signature = "sha256=" + hmac.new(b"hooksecret", body, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature-256": signature,
        "X-GitHub-Event": "push",
        "Content-Type": "application/json",
    }
    response = client.post("/commands/hook?wait=10", data=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["stdout"] == body.decode()
    assert response.json["args"] == []
    wrong = client.post("/commands/hook", data=body + b" ", headers=headers)
    assert wrong.status_code == 401
    unsigned = client.post("/commands/hook", data=body, content_type="application/json")
    assert unsigned.status_code == 401


@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#signed-requests-and-webhooks")
def test_gitlab_token_webhook(client: Client) -> None:
    """GitLab's X-Gitlab-Token header authenticates a signed command too."""
    response = client.post(
        "/commands/signed?wait=10",
        json={"args": ["from", "gitlab"]},
        headers={"X-Gitlab-Token": "s2"},
    )
    assert response.status_code == 200
    assert response.json["stdout"] == "from gitlab\n"
    assert (
        client.post("/commands/signed", json={}, headers={"X-Gitlab-Token": "no"}).status_code
        == 401
    )


@pytest.mark.docs("http-api.md#authentication")
@pytest.mark.docs("security.md#401-403-and-404", "security.md#client-addresses")
def test_address_allowlists() -> None:
    """Global and per-command CIDR lists; X-Forwarded-For only from trusted proxies."""
    gate = Gate(allow_ips=["127.0.0.0/8", "10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
    gate.register("echo", ["echo"])
    gate.register("internal", ["echo"], allow_ips=["10.1.0.0/16"])
    client = Client(gate)
    try:

        def post(path: str, remote: str, forwarded: str | None = None) -> int:
            """The status; a 403 must say address_not_allowed and create no job."""
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            created = gate.store.count(since=time.time() - 3600)
            response = client.post(
                path, json={}, headers=headers, environ_base={"REMOTE_ADDR": remote}
            )
            if response.status_code == 403:
                assert response.json["error"]["code"] == "address_not_allowed"
                assert gate.store.count(since=time.time() - 3600) == created
            return int(response.status_code)

        assert post("/commands/echo", "127.0.0.1") == 202
        assert post("/commands/echo", "192.168.1.5") == 403
        assert post("/commands/echo", "10.2.3.4") == 202
        assert post("/commands/internal", "10.2.3.4") == 403
        assert post("/commands/internal", "10.1.2.3") == 202
        # the trusted proxy's view of the client counts; a client's own claim does not
        assert post("/commands/internal", "127.0.0.1", "10.1.9.9") == 202
        assert post("/commands/internal", "127.0.0.1", "10.1.9.9, 192.168.0.1") == 403
        assert post("/commands/echo", "10.2.3.4", "127.0.0.1") == 202
        assert post("/commands/internal", "10.2.3.4", "10.1.0.1") == 403
        assert client.get("/health", environ_base={"REMOTE_ADDR": "8.8.8.8"}).status_code == 200
    finally:
        gate.close()


@pytest.mark.docs("security.md#client-addresses")
def test_client_address_walks_trusted_proxies() -> None:
    """The client is the last X-Forwarded-For hop that is not a trusted proxy."""
    trusted = parse_networks(["10.0.0.0/8"], "t")
    assert client_address("10.0.0.1", "1.2.3.4, 10.0.0.7", trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6, 1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("5.5.5.5", "1.2.3.4", trusted) == "5.5.5.5"
    assert client_address("10.0.0.1", None, trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.2.3.4", ()) == "10.0.0.1"


def test_address_allowlist_matching() -> None:
    """An allowlist entry with host bits set is its network; an IPv4-mapped IPv6 client
    (``::ffff:10.1.2.3``) matches its IPv4 network; a zone id (``fe80::1%eth0``) is ignored;
    an address that does not parse (or none) is never allowed."""
    allowed = parse_networks(["10.0.0.1/8", "fe80::/64"], "t")
    require_address("10.9.9.9", allowed, "x")
    require_address("::ffff:10.1.2.3", allowed, "x")
    require_address("fe80::1%eth0", allowed, "x")
    for address in ("11.0.0.1", "::ffff:11.0.0.1", "not-an-ip", ""):
        with pytest.raises(Forbidden) as caught:
            require_address(address, allowed, "x")
        assert caught.value.code == "address_not_allowed"


@pytest.mark.docs("security.md#bearer-tokens")
@pytest.mark.docs("configuration.md#auth")
def test_token_config_errors() -> None:
    """Tokens need an id, a SHA-256 hex digest, unique ids."""
    with pytest.raises(ConfigError):
        make_token("x", "not-hex")
    with pytest.raises(ConfigError):
        make_token("", hash_token("a"))
    with pytest.raises(ConfigError):
        Gate(tokens=[make_token("a", hash_token("1")), make_token("a", hash_token("2"))])


@pytest.mark.parametrize(
    ("sha256", "commands"),
    [
        ("a" * 63, None),  # hex, one digit short
        ("g" * 64, None),  # 64 digits, not hex
        (5, None),  # not a string
        (hash_token("a"), "echo"),  # one string, not a list of names
        (hash_token("a"), ["echo", 5]),
    ],
)
@pytest.mark.docs("configuration.md#auth")
def test_token_digest_is_64_hex_digits_and_commands_a_list(sha256: Any, commands: Any) -> None:
    """A token's sha256 is exactly 64 hex digits and its commands a list of names; anything
    else is a ConfigError at start-up, never a crash or a token that matches nothing."""
    with pytest.raises(ConfigError):
        make_token("x", sha256, commands=commands)
    assert make_token("x", hash_token("a").upper()).sha256 == hash_token("a")


@pytest.mark.docs("http-api.md#authentication")
def test_401_challenge_says_what_to_send(client: Client) -> None:
    """WWW-Authenticate is ``Bearer realm="procgate"`` without a bearer token, adds
    ``error="invalid_token"`` for an unknown one, and is ``HMAC realm="procgate"`` for a
    signed command whose signature or GitLab token is missing or wrong."""
    challenges = {
        "none": client.get("/jobs"),
        "unknown": client.get("/jobs", headers={"Authorization": "Bearer wrong"}),
        "basic": client.get("/jobs", headers={"Authorization": "Basic Y2k6eA=="}),
        "unsigned": client.post("/commands/hook", data=b"{}"),
        "bad signature": client.post(
            "/commands/hook", data=b"{}", headers={"X-Hub-Signature-256": "sha256=00"}
        ),
        "bad gitlab token": client.post(
            "/commands/signed", json={}, headers={"X-Gitlab-Token": "wrong"}
        ),
    }
    assert {name: r.status_code for name, r in challenges.items()} == dict.fromkeys(
        challenges, 401
    )
    assert {name: r.headers["WWW-Authenticate"] for name, r in challenges.items()} == {
        "none": 'Bearer realm="procgate"',
        "unknown": 'Bearer realm="procgate", error="invalid_token"',
        "basic": 'Bearer realm="procgate"',
        "unsigned": 'HMAC realm="procgate"',
        "bad signature": 'HMAC realm="procgate"',
        "bad gitlab token": 'HMAC realm="procgate"',
    }


# -- limits --------------------------------------------------------------------------------


@pytest.mark.docs("security.md#limits")
def test_args_count_and_length_limits() -> None:
    """Too many or too long args are a 400 naming the limit."""
    gate = Gate(max_args=3, max_arg_length=5)
    gate.register("echo", ["echo"])
    client = Client(gate)
    try:
        assert client.post("/commands/echo", json={"args": ["a"] * 4}).status_code == 400
        response = client.post("/commands/echo", json={"args": ["a", "toolong"]})
        assert response.status_code == 400
        assert "argument 2" in response.json["error"]["message"]
        assert client.post("/commands/echo", json={"args": ["a", "b"]}).status_code == 202
    finally:
        gate.close()


@pytest.mark.docs("security.md#limits")
def test_stdin_limit() -> None:
    """stdin over max_stdin is a 413."""
    gate = Gate(max_stdin=10)
    gate.register("cat", ["cat"])
    client = Client(gate)
    try:
        refused(
            gate.store,
            413,
            "payload_too_large",
            lambda: client.post("/commands/cat", json={"stdin": "x" * 11}),
        )
        assert client.post("/commands/cat", json={"stdin": "x" * 10}).status_code == 202
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#errors")
@pytest.mark.docs("security.md#limits")
def test_max_running_per_command_and_global() -> None:
    """Beyond max_running queued-or-running jobs: 429 with Retry-After."""
    gate = Gate(runner=ThreadRunner(max_workers=4), max_running=3)
    gate.register("sleep", ["sleep"], max_running=2, kill_grace=0.5)
    gate.register("other", ["sleep"], kill_grace=0.5)
    client = Client(gate)
    try:
        for _ in range(2):
            assert client.post("/commands/sleep", json={"args": ["30"]}).status_code == 202
        third = client.post("/commands/sleep", json={"args": ["30"]})
        assert third.status_code == 429
        assert third.json["error"]["code"] == "too_many_running"
        assert "Retry-After" in third.headers
        assert client.post("/commands/other", json={"args": ["30"]}).status_code == 202
        assert client.post("/commands/other", json={"args": ["30"]}).status_code == 429
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#post-commandsname")
@pytest.mark.docs("security.md#limits")
def test_max_rate() -> None:
    """max_rate = "2/minute": the third job within the minute is a 429."""
    gate = Gate()
    gate.register("echo", ["echo"], max_rate="2/minute")
    client = Client(gate)
    try:
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
        limited = client.post("/commands/echo", json={})
        assert limited.status_code == 429
        assert limited.json["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) == 30
    finally:
        gate.close()


def test_max_rate_window_edge_on_every_store(
    job_store: JobStore, time_machine: time_machine.TimeMachineFixture
) -> None:
    """max_rate counts the jobs created in the window before now, on every store: on a
    stopped clock, 0.01 s before the first two jobs leave the minute a third is still a
    429; 0.01 s after, it runs, and the window is full again."""
    time_machine.move_to(time.time(), tick=False)
    gate = Gate(store=job_store)
    gate.register("echo", ["echo"], max_rate="2/minute")
    client = Client(gate)
    try:
        for _ in range(2):
            assert client.post("/commands/echo", json={"wait": True}).status_code == 200
        time_machine.shift(60 - 0.01)
        refused(job_store, 429, "rate_limited", lambda: client.post("/commands/echo", json={}))
        time_machine.shift(0.02)
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
        refused(job_store, 429, "rate_limited", lambda: client.post("/commands/echo", json={}))
    finally:
        gate.close()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"max_rate": "ten per minute"}, "max_rate"),
        ({"max_running": 0}, "max_running"),
        ({"limits": {"bogus": 1}}, "unknown limit"),
        ({"limits": {"cpu": -1}}, "whole number"),
        ({"webhook": True}, "hmac_secret"),
        ({"allow_ips": ["not-an-ip"]}, "allow_ips"),
    ],
)
@pytest.mark.docs("python-api.md#gateregister")
def test_policy_config_errors(policy: dict[str, Any], message: str) -> None:
    """Bad limits and security settings fail at registration."""
    gate = Gate()
    try:
        with pytest.raises(ConfigError, match=message):
            gate.register("x", ["echo"], **policy)
    finally:
        gate.close()


@pytest.mark.docs("security.md#rlimits-user-and-group")
def test_rlimits_apply_to_the_child() -> None:
    """limits are set on the child: here, open files and file size."""
    gate = Gate()
    gate.register(
        "limits", ["sh", "-c", "ulimit -n; ulimit -f"], limits={"nofile": 64, "fsize": 1024 * 1024}
    )
    client = Client(gate)
    try:
        job = client.post("/commands/limits", json={"wait": True}).json
    finally:
        gate.close()
    assert job["status"] == "succeeded", job
    assert job["stdout"].split() == ["64", "2048"]  # ulimit -f counts 512-byte blocks


@pytest.mark.docs("security.md#rlimits-user-and-group")
def test_cpu_limit_kills_a_spinning_child() -> None:
    """A CPU-seconds limit stops a busy loop: the job fails, killed by SIGKILL/SIGXCPU."""
    gate = Gate()
    gate.register("spin", ["sh", "-c", "while :; do :; done"], limits={"cpu": 1}, timeout=20)
    client = Client(gate)
    try:
        job = client.post("/commands/spin", json={"wait": True}).json
    finally:
        gate.close()
    assert job["status"] == "failed"
    assert job["error"] in ("killed by SIGXCPU", "killed by SIGKILL")


@pytest.mark.docs("security.md#rlimits-user-and-group")
@pytest.mark.docs("python-api.md#gateregister")
def test_user_needs_root_or_exists() -> None:
    """Dropping to a user is checked at registration."""
    gate = Gate()
    try:
        with pytest.raises(ConfigError):
            gate.register("x", ["id"], user="no-such-user-procgate")
    finally:
        gate.close()


@pytest.mark.docs("security.md#rlimits-user-and-group")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user": "no-such-user-procgate"}, "no such user or group: .*'no-such-user-procgate'"),
        ({"group": "no-such-group-procgate"}, "no such user or group: .*'no-such-group-procgate'"),
        ({"limits": 5}, "limits must be a table of rlimit = number$"),
        (
            {"limits": {"files": 5}},
            "unknown limit 'files'; known: as, core, cpu, data, fsize, memlock, nofile, nproc, "
            "rss, stack$",
        ),
        ({"limits": {"nofile": "64"}}, "limit nofile must be a whole number >= 0$"),
        ({"limits": {"core": True}}, "limit core must be a whole number >= 0$"),
        ({"limits": {"nofile": -1}}, "limit nofile must be a whole number >= 0$"),
    ],
    ids=["user", "group-alone", "limits-not-a-table", "unknown", "string", "bool", "negative"],
)
def test_identity_and_limits_are_checked_at_registration(
    options: dict[str, Any], message: str
) -> None:
    """A user or group that does not exist (a group alone too), and limits that are not a
    table of known rlimits with whole numbers >= 0, are refused when the command is
    registered, with a message naming the command; a limit of 0 (``core = 0``) is fine."""
    gate = Gate()
    try:
        with pytest.raises(ConfigError, match="^command 'x': " + message):
            gate.register("x", ["echo"], **options)
        gate.register("y", ["echo"], limits={"core": 0})
    finally:
        gate.close()


@pytest.mark.docs("security.md#rlimits-user-and-group")
def test_runs_as_configured_user() -> None:
    """As root, a command with user = "nobody" runs as nobody, without root's groups."""
    gate = Gate()
    gate.register("whoami", ["id"], user="nobody", group="nogroup")
    client = Client(gate)
    try:
        job = client.post("/commands/whoami", json={"wait": True}).json
    finally:
        gate.close()
    assert job["status"] == "succeeded", job
    assert "uid=65534(nobody)" in job["stdout"]
    assert "groups=65534(nogroup)" in job["stdout"]


# -- audit -----------------------------------------------------------------------------------


@pytest.mark.docs("security.md#the-audit-log")
def test_audit_log_lines(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """One JSON line per transition, with token id and client, never the token or stdin."""
    with caplog.at_level(logging.INFO, logger="procgate.audit"):
        job = client.post(
            "/commands/echo",
            json={"args": ["hi"], "stdin": "top-secret-stdin", "wait": True},
            headers=bearer(CI),
            environ_base={"REMOTE_ADDR": "127.0.0.9"},
        ).json
        wait_for(lambda: len([r for r in caplog.records if r.name == "procgate.audit"]) >= 3)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "procgate.audit"]
    assert [line["event"] for line in lines] == ["queued", "running", "succeeded"]
    final = lines[-1]
    assert final["job"] == job["id"]
    assert final["token"] == "ci"
    assert final["client"] == "127.0.0.9"
    assert final["command"] == "echo"
    assert final["argv"][-1] == "hi"
    assert final["returncode"] == 0
    assert isinstance(final["duration"], float)
    text = caplog.text
    assert CI not in text
    assert "top-secret-stdin" not in text
    assert hash_token(CI) not in text


@pytest.mark.docs("security.md#the-audit-log")
def test_cancel_is_audited(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """A cancel request is audited with who asked."""
    job = client.post("/commands/sleep", json={"args": ["30"]}, headers=bearer(CI)).json["id"]

    def events() -> list[str]:
        return [
            json.loads(r.getMessage())["event"]
            for r in caplog.records
            if r.name == "procgate.audit"
        ]

    with caplog.at_level(logging.INFO, logger="procgate.audit"):
        client.delete(f"/jobs/{job}?wait=10", headers=bearer(CI))
        # The runner writes its line just after the store says cancelled: wait for it.
        wait_for(lambda: "cancelled" in events(), timeout=30)
    assert "cancel_requested" in events()


@pytest.mark.docs("security.md#bearer-tokens")
def test_concurrent_auth_is_consistent(client: Client) -> None:
    """Many threads with mixed tokens each get exactly their own rights."""
    results: list[tuple[str, int]] = []

    def call(secret: str) -> None:
        for _ in range(10):
            response = client.post("/commands/secret", json={}, headers=bearer(secret))
            results.append((secret, response.status_code))

    threads = [threading.Thread(target=call, args=(s,)) for s in (CI, OPS) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {code for secret, code in results if secret == CI} == {403}
    assert {code for secret, code in results if secret == OPS} == {202}


@pytest.mark.docs("security.md#authentication-in-middleware-instead")
def test_any_wsgi_auth_middleware_can_stand_in_front() -> None:
    """Auth is pluggable: a plain WSGI middleware in front of a token-less Gate works."""

    def basic_auth(app: Any) -> Any:
        def middleware(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("HTTP_AUTHORIZATION") != "Basic dXNlcjpwdw==":  # user:pw
                start_response("401 Unauthorized", [("WWW-Authenticate", "Basic")])
                return [b"who are you?"]
            return app(environ, start_response)

        return middleware

    gate = Gate()
    gate.register("echo", ["echo"])
    client = Client(basic_auth(gate))
    try:
        assert client.post("/commands/echo", json={}).status_code == 401
        response = client.post(
            "/commands/echo",
            json={"args": ["in"], "wait": True},
            headers={"Authorization": "Basic dXNlcjpwdw=="},
        )
        assert response.json["stdout"] == "in\n"
    finally:
        gate.close()


@pytest.mark.docs("security.md#bearer-tokens")
@pytest.mark.docs("configuration.md#procgate-token")
def test_token_command_prints_a_working_entry(tmp_path: Any) -> None:
    """procgate token makes a secret whose config entry authenticates it."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "procgate", "token", "--id", "deploy"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    secret = out.splitlines()[0].removeprefix("token: ")
    digest = out.split('sha256 = "')[1].split('"')[0]
    assert hash_token(secret) == digest
    assert 'id = "deploy"' in out


@pytest.mark.docs("security.md#limits")
def test_max_rate_is_not_freed_by_deleting_jobs() -> None:
    """Deleting finished jobs does not make room under max_rate."""
    gate = Gate()
    gate.register("echo", ["echo"], max_rate="2/minute")
    client = Client(gate)
    try:
        for _ in range(2):
            job = client.post("/commands/echo", json={"wait": True}).json
            assert client.delete(f"/jobs/{job['id']}").status_code == 204
        assert client.post("/commands/echo", json={}).status_code == 429
    finally:
        gate.close()


@pytest.mark.docs("security.md#rlimits-user-and-group")
def test_user_without_group_gets_the_users_group() -> None:
    """user = "nobody" alone runs with nobody's own group, not root's."""
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    gate = Gate()
    gate.register("whoami", ["id"], user="nobody")
    client = Client(gate)
    try:
        job = client.post("/commands/whoami", json={"wait": True}).json
    finally:
        gate.close()
    assert job["status"] == "succeeded", job  # an empty stdout would prove nothing
    # The whole line: nobody's uid, its primary group, and no supplementary root group.
    assert job["stdout"] == (
        f"uid={nobody.pw_uid}(nobody) gid={nobody.pw_gid}({group}) "
        f"groups={nobody.pw_gid}({group})\n"
    )


@pytest.mark.docs("security.md#rlimits-user-and-group")
@pytest.mark.docs("uploads.md#where-files-go")
def test_uploads_are_readable_by_the_commands_user(tmp_path: Any) -> None:
    """A command that runs as another user can read its uploaded files."""
    import io

    gate = Gate()
    gate.register("show", 'cat "$1"', shell=True, user="nobody")
    client = Client(gate)
    try:
        response = client.post(
            "/commands/show",
            data={
                "request": json.dumps({"args": ["{file:f}"], "wait": True}),
                "f": (io.BytesIO(b"for nobody"), "f.txt"),
            },
            content_type="multipart/form-data",
        )
    finally:
        gate.close()
    assert response.json["stdout"] == "for nobody", response.json


@pytest.mark.docs("security.md#the-audit-log")
def test_audit_says_who_cancelled(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """An admin cancelling another token's job is named in the audit line."""
    job = client.post("/commands/sleep", json={"args": ["30"]}, headers=bearer(CI)).json["id"]
    with caplog.at_level(logging.INFO, logger="procgate.audit"):
        client.delete(
            f"/jobs/{job}?wait=10",
            headers=bearer(ADMIN),
            environ_base={"REMOTE_ADDR": "10.9.9.9"},
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "procgate.audit"]
    cancel = next(line for line in lines if line["event"] == "cancel_requested")
    assert (cancel["token"], cancel["by_token"], cancel["by_client"]) == ("ci", "admin", "10.9.9.9")


KEY = "deploy-2026-11-24"  # the docs' example: a key two callers may well both pick


def keyed(client: Client, path: str, word: str, **options: Any) -> Any:
    """POST a job that echoes ``word``, under ``KEY``, and wait for it."""
    args = [word] if path.startswith("/commands/") else ["echo", word]
    body = {"args": args, "idempotency_key": KEY, "wait": True}
    return client.post(path, json=body, **options)


@pytest.mark.docs("http-api.md#idempotency")
@pytest.mark.docs("security.md#failure-modes", "stores.md#idempotency")
def test_idempotency_keys_are_per_token(job_store: JobStore) -> None:
    """Bob sending Alice's idempotency_key runs his own job and sees nothing of hers; each
    of them still gets their own job replayed. On every store."""
    alice, bob = bearer("alice-secret"), bearer("bob-secret")
    gate = Gate(
        store=job_store,
        runner=ThreadRunner(),
        tokens=[
            make_token("alice", hash_token("alice-secret")),
            make_token("bob", hash_token("bob-secret")),
        ],
    )
    gate.register("echo", ["echo"])
    client = Client(gate)
    try:
        first = keyed(client, "/commands/echo", "alice", headers=alice)
        other = keyed(client, "/commands/echo", "bob", headers=bob)
        assert (first.status_code, other.status_code) == (200, 200)
        assert "Idempotent-Replayed" not in other.headers
        assert other.json["id"] != first.json["id"]
        assert (other.json["args"], other.json["stdout"]) == (["bob"], "bob\n")
        for headers, job in ((alice, first.json), (bob, other.json)):
            again = keyed(client, "/commands/echo", "ignored", headers=headers)
            assert again.headers["Idempotent-Replayed"] == "true"
            assert (again.json["id"], again.json["stdout"]) == (job["id"], job["stdout"])
        assert len(job_store.list().jobs) == 2
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#idempotency")
def test_idempotency_keys_are_per_client_address_without_tokens(job_store: JobStore) -> None:
    """Without tokens the client address is the caller: two addresses with one key get a
    job each, for a command and for /run alike, and /run does not share the command's key
    space; each address gets its own jobs replayed. On every store."""
    gate = Gate(store=job_store, runner=ThreadRunner(), allow_programs=["echo"])
    gate.register("echo", ["echo"])
    client = Client(gate)
    a, b = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    try:
        jobs = {}
        for path in ("/commands/echo", "/run"):
            for name, address in (("a", a), ("b", b)):
                response = keyed(client, path, f"{name} {path}", environ_base=address)
                assert response.status_code == 200, response.json
                assert "Idempotent-Replayed" not in response.headers
                assert response.json["stdout"] == f"{name} {path}\n"
                jobs[path, name] = response.json["id"]
        assert len(set(jobs.values())) == 4
        for (path, name), job_id in jobs.items():
            again = keyed(client, path, "ignored", environ_base=a if name == "a" else b)
            assert again.headers["Idempotent-Replayed"] == "true"
            assert (again.json["id"], again.json["stdout"]) == (job_id, f"{name} {path}\n")
        assert len(job_store.list().jobs) == 4
    finally:
        gate.close()


class KeyOnlyStore(MemoryStore):
    """A store written to the old contract: it matches an idempotency key alone."""

    def create(self, job: Job) -> Job:
        for stored in self.list().jobs:
            if job.idempotency_key is not None and stored.idempotency_key == job.idempotency_key:
                return stored
        return super().create(job)


def test_a_store_matching_keys_across_callers_never_reveals_the_job() -> None:
    """If a store answers another caller's job for a key, the Gate answers a generic 500
    with nothing of that job, and logs the store's fault."""
    gate = Gate(store=KeyOnlyStore(), runner=ThreadRunner())
    gate.register("echo", ["echo"])
    client = Client(gate)
    try:
        keyed(client, "/commands/echo", "secret-of-a", environ_base={"REMOTE_ADDR": "10.0.0.1"})
        response = keyed(client, "/commands/echo", "b", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    finally:
        gate.close()
    assert response.status_code == 500
    assert response.json["error"] == {"code": "internal_error", "message": "internal server error"}
    assert "Idempotent-Replayed" not in response.headers


def hosted(client: Client, method: str, path: str, host: str, **options: Any) -> Any:
    return client.open(path, method=method, headers={"Host": host}, **options)


@pytest.mark.docs("http-api.md#get-health")
@pytest.mark.docs("security.md#the-host-header")
def test_trusted_hosts_refuse_other_hosts() -> None:
    """With trusted_hosts, a request for any other Host (or none that is valid) is a JSON
    400 untrusted_host and creates nothing; the trusted names (a leading "." for their
    subdomains, any port) build the job's url and Location; /health answers any Host."""
    gate = Gate(runner=ThreadRunner(), trusted_hosts=["jobs.example.com", ".internal"])
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    client = Client(gate)
    try:
        for host in ("evil.example", "jobs.example.com.evil.example", "[::1]", "a b", ""):
            response = hosted(client, "POST", "/commands/sleep", host, json={"args": ["0"]})
            assert response.status_code == 400, host
            assert response.json["error"]["code"] == "untrusted_host"
        assert gate.store.list().jobs == []
        job = hosted(client, "POST", "/commands/sleep", "jobs.example.com", json={"args": ["30"]})
        assert job.status_code == 202
        url = f"http://jobs.example.com/jobs/{job.json['id']}"
        assert (job.headers["Location"], job.json["url"]) == (url, url)
        read = hosted(client, "GET", f"/jobs/{job.json['id']}", "ci.build.internal:8080")
        assert read.json["url"] == f"http://ci.build.internal:8080/jobs/{job.json['id']}"
        for path in (f"/jobs/{job.json['id']}", "/jobs", "/commands", "/openapi.json", "/nope"):
            assert hosted(client, "GET", path, "evil.example").status_code == 400, path
        cancel = hosted(client, "DELETE", f"/jobs/{job.json['id']}", "evil.example")
        assert cancel.status_code == 400
        assert gate.store.get(job.json["id"]).status.value == "running"
        assert hosted(client, "GET", "/health", "10.1.2.3:8000").json == {"status": "ok"}
        hosted(client, "DELETE", f"/jobs/{job.json['id']}?wait=10", "jobs.example.com")
    finally:
        gate.close()


@pytest.mark.docs("security.md#the-host-header")
def test_without_trusted_hosts_any_host_is_answered() -> None:
    """trusted_hosts=None (the default) answers any Host, building URLs from it."""
    gate = Gate(runner=ThreadRunner())
    gate.register("echo", ["echo"])
    try:
        job = hosted(Client(gate), "POST", "/commands/echo", "anything.test", json={"wait": True})
    finally:
        gate.close()
    assert job.json["url"] == f"http://anything.test/jobs/{job.json['id']}"


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("jobs.example.com", "must be a list of strings"),
        ([], "must name a host"),
        (["jobs.example.com:8000"], "not a host name"),
        (["[::1]"], "not a host name"),
        (["*.example.com"], "not a host name"),
        (["https://jobs.example.com"], "not a host name"),
    ],
)
@pytest.mark.docs("security.md#the-host-header")
def test_trusted_hosts_config_errors(hosts: Any, message: str) -> None:
    """trusted_hosts must be a non-empty list of names or IPv4 addresses: no port (werkzeug
    ignores it), no IPv6 literal (werkzeug cannot tell two apart), no wildcard or URL."""
    with pytest.raises(ConfigError, match="trusted_hosts") as info:
        Gate(trusted_hosts=hosts)
    assert message in info.value.message
