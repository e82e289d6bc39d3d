"""The service's surface, as a hostile client meets it: `python -m ml_assets.serving` itself (its
logging, its uvicorn options), on a free loopback port, with tokens configured.

Who may call which path, what answers and logs may say (a URI's password never), HEAD and trailing
slashes, slow and broken clients (a body-read timeout of 1 s here, a cap of 3 requests in flight),
and the HTTP that uvicorn's parser refuses before the application sees it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ml_assets.lib import paths
from ml_assets.lib.settings import environment_without_settings
from ml_assets_tests.conftest import tx
from ml_assets_tests.serving_support import free_port, shared_registry

SCORING = "scoring-token-0123456789abcdef"
ROTATED = "scoring-token-rotated-0123456789"  # a second scoring token, as during a rotation
OPERATIONS = "operations-token-0123456789abcdef"
PASSWORD = "pa55w0rd-never-shown"
# What uvicorn's parser answers before the application sees a request (README: Serving).
PARSER_ANSWER = b"Invalid HTTP request received."
BODY_TIMEOUT_SECONDS, MAX_IN_FLIGHT = 1, 3


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _serve(folder: Path, env: dict[str, str], *args: str) -> Served:
    """`python -m ml_assets.serving` with only `env`'s settings (none of this shell's), its output
    in a log file; returns once it answers /health (200 or 503)."""
    port = free_port()
    log = folder / "service.log"
    environment = environment_without_settings() | {"MLFLOW_DISABLE_TELEMETRY": "true"} | env
    command = [sys.executable, "-m", "ml_assets.serving", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=environment, cwd=paths.REPO_ROOT, stdout=out, stderr=out)
    served = Served(proc, port, log)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, served.log_text()
        assert time.monotonic() < deadline, served.log_text()
        try:
            if httpx.get(f"{served.url}/health", timeout=2).status_code in (200, 503):
                return served
        except httpx.TransportError:
            time.sleep(0.1)


def _stop(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The module's service: the shared registry's champion, an SQLite store, the scoring tokens
    in a file (two: a rotation) and the operations token in the environment."""
    folder = tmp_path_factory.mktemp("surface")
    registry = shared_registry()
    (folder / "scoring.token").write_text(f"{SCORING}\n{ROTATED}\n")
    env = {
        "ML_ASSETS_DATA_DIR": str(folder / "data"),
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ML_ASSETS_MODEL_NAME": registry.register(aliases={"champion": 1}),
        "ML_ASSETS_ONLINE_STORE": f"sqlite:///{folder / 'online.db'}",
        "ML_ASSETS_SERVING_SCORING_TOKEN_FILE": str(folder / "scoring.token"),
        "ML_ASSETS_SERVING_OPERATIONS_TOKEN": OPERATIONS,
        "ML_ASSETS_SERVING_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
        "ML_ASSETS_SERVING_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    }
    served = _serve(folder, env)
    yield served
    _stop(served)
    # Whatever the tests sent, the log never got a traceback.
    assert "Traceback" not in served.log_text(), served.log_text()


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


OPERATION_PATHS = ["/model", "/health/details", "/docs", "/redoc", "/openapi.json"]
CALLERS = {  # caller -> its Authorization header
    "nobody": {},
    "scoring": _bearer(SCORING),
    "rotated scoring": _bearer(ROTATED),
    "operations": _bearer(OPERATIONS),
    "a wrong token": _bearer("not-a-token-of-ours-0123456789"),
    "basic auth": {"Authorization": "Basic c2NvcmluZzpwYXNz"},
}


def _expected(path: str, caller: str) -> int:
    scope = {"/predict": "scoring", "/health": None}.get(path, "operations")
    if scope is None or caller.endswith(scope):
        return 404 if path == "/unknown" else 200
    return 403 if caller in ("scoring", "rotated scoring", "operations") else 401


@pytest.mark.parametrize("caller", list(CALLERS))
def test_each_path_opens_to_its_own_scope_only(served, caller):
    answers = {}
    with httpx.Client(base_url=served.url, headers=CALLERS[caller], timeout=30) as client:
        for i, path in enumerate(["/predict", "/health", *OPERATION_PATHS, "/unknown"]):
            if path == "/predict":
                body = tx(i, transaction_id=f"scope-{caller.replace(' ', '-')}")
                answers[path] = client.post(path, json=body)
            else:
                answers[path] = client.get(path)
    assert {p: r.status_code for p, r in answers.items()} == {p: _expected(p, caller) for p in answers}
    for r in answers.values():
        assert "server" not in r.headers  # no `server: uvicorn`
        if r.status_code >= 400:  # every refusal is JSON, with its reason
            assert r.headers["content-type"] == "application/json" and r.json()["error"], r.text
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert answers["/health"].json() == {"status": "ok"}  # readiness, and nothing else
    if caller == "operations":
        assert answers["/health/details"].json()["arms"][0]["version"] == "1"
        assert answers["/model"].json()["registry"]["tracking_store"] == "sqlite://"  # no path
    if caller == "scoring":
        assert answers["/predict"].json()["predictions"][0]["model_version"] == "1"
        assert "operations" in answers["/model"].json()["error"]


def test_head_is_answered_where_get_is_and_a_trailing_slash_is_no_redirect(served):
    ops, scoring = _bearer(OPERATIONS), _bearer(SCORING)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for path, headers in [("/health", {}), ("/model", ops), ("/health/details", ops)]:
            head, get = client.head(path, headers=headers), client.get(path, headers=headers)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == get.headers["content-length"]
        assert client.head("/model").status_code == 401  # HEAD opens nothing GET doesn't
        slash = client.post("/predict/", json=tx(1, transaction_id="trailing-slash"), headers=scoring)
        assert slash.status_code == 200
        assert slash.json()["predictions"][0]["transaction_id"] == "trailing-slash"
        assert client.get("/health/").json() == {"status": "ok"}
        assert client.get("/model/", headers=ops).status_code == 200
        assert client.get("/model/").status_code == 401  # the slash is no way around the token
        wrong = client.get("/predict", headers=scoring)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and wrong.json()["error"]


def _raw(port: int, data: bytes, give_up: float = 30) -> tuple[bytes, bool]:
    """Send `data` on a new connection; (what came back, whether the server closed it). Reading
    stops at the server's close or once a whole response is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as s:
        s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return got, False
            if not chunk:
                return got, True
            got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = [int(h[15:]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                s.settimeout(0.2)  # the whole answer is in: is the connection kept or closed?


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


BODY = json.dumps(tx(1, transaction_id="hostile")).encode()
AUTH = f"Authorization: Bearer {SCORING}\r\n".encode()
POST = b"POST /predict HTTP/1.1\r\nHost: x\r\n" + AUTH
N = str(len(BODY)).encode()
# Refused by uvicorn's parser (httptools) before the application sees them: plain text, closed.
PARSER_REFUSES = {
    "a Content-Length that is not a number": POST + b"Content-Length: abc\r\n\r\n" + BODY,
    "a signed Content-Length": POST + b"Content-Length: +" + N + b"\r\n\r\n" + BODY,
    "a negative Content-Length": POST + b"Content-Length: -1\r\n\r\n",
    "a Content-Length past 64 bits": POST + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "two Content-Lengths": POST + b"Content-Length: " + N + b"\r\nContent-Length: " + N + b"\r\n\r\n" + BODY,
    "Transfer-Encoding and Content-Length": POST
    + b"Content-Length: "
    + N
    + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    + BODY,
    "a bad chunk": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + BODY + b"\r\n0\r\n\r\n",
    "a NUL in the path": b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n",
    "an unknown method": b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    "a header without a colon": b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
    "bare LF line ends": b"GET /health HTTP/1.1\nHost: x\n\n",
    "an obsolete folded header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "not HTTP at all (a TLS hello)": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}
# Seen by the application: a JSON answer with a reason (status expected).
APPLICATION_ANSWERS = {
    "an encoded NUL in the path": (b"GET /health%00 HTTP/1.1\r\nHost: x\r\n\r\n", 401),
    "a body that is not JSON": (POST + b"Content-Length: 3\r\n\r\nabc", 400),
    "a body that is not UTF-8": (POST + b"Content-Length: 3\r\n\r\n\xff\xfe{", 400),
    "a Content-Length past the limit": (POST + b"Content-Length: 9999999999\r\n\r\n", 413),
    "a method the path doesn't take": (b"PUT /predict HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n", 405),
    "a malformed Authorization": (b"GET /model HTTP/1.1\r\nAuthorization: Bearer \xff\r\n\r\n", 401),
    "a token of the wrong scope": (b"GET /model HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n", 403),
    "a slow body without a token": (b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", 401),
}


@pytest.mark.parametrize("case", list(PARSER_REFUSES))
def test_what_the_parser_refuses_is_its_plain_400(served, case):
    answer, closed = _raw(served.port, PARSER_REFUSES[case])
    status, body = _status_and_body(answer)
    assert (status, body, closed) == (400, PARSER_ANSWER, True), answer
    assert httpx.get(f"{served.url}/health").status_code == 200  # and the service is still there


@pytest.mark.parametrize("case", list(APPLICATION_ANSWERS))
def test_what_the_application_sees_it_answers_as_json_with_a_reason(served, case):
    request, expected = APPLICATION_ANSWERS[case]
    answer, closed = _raw(served.port, request)
    status, body = _status_and_body(answer)
    assert status == expected, answer
    if status in (401, 403):  # refused at the door: closed, whatever body the client still owes
        assert closed
    assert b"application/json" in answer.partition(b"\r\n\r\n")[0] and json.loads(body)["error"]


def _slow_client(port: int, sent: int, declared: int = 1000) -> socket.socket:
    """A POST /predict that declares `declared` body bytes and sends `sent` of them."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(POST + b"Content-Length: %d\r\n\r\n" % declared + BODY[:sent])
    return s


def _read_all(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def test_a_slow_client_is_cut_off_at_the_body_timeout_while_others_are_served(served):
    slow = _slow_client(served.port, sent=10)
    # Other clients, meanwhile, each on its own connection.
    with httpx.Client(base_url=served.url, headers=_bearer(SCORING), timeout=30) as client:
        others = [client.post("/predict", json=tx(i, transaction_id=f"meanwhile-{i}")) for i in range(5)]
    assert [r.status_code for r in others] == [200] * 5
    with slow:
        answer = _read_all(slow)  # returns: the server closed the connection after answering
    status, body = _status_and_body(answer)
    assert status == 408 and b"connection: close" in answer.lower()
    assert f"within {BODY_TIMEOUT_SECONDS} s (10 bytes came)" in json.loads(body)["error"]
    _wait_for(lambda: "the body did not arrive within" in served.log_text(), served)


def test_past_the_cap_on_requests_in_flight_429_with_retry_after(served):
    held: list[socket.socket] = []

    def refused() -> httpx.Response | None:
        """With MAX_IN_FLIGHT slow clients just opened (each in flight until its body comes or its
        timeout), the next request, or None if they were not all in flight yet."""
        for s in held:
            s.close()
        held[:] = [_slow_client(served.port, sent=5) for _ in range(MAX_IN_FLIGHT)]
        r = httpx.get(f"{served.url}/health")
        return r if r.status_code == 429 else None

    try:
        busy = _wait_for(refused, served)
        assert busy.headers["retry-after"] == "1" and "in flight" in busy.json()["error"]
        # The held ones are answered 408 at their timeout, and the slots free up.
        assert [_status_and_body(_read_all(s))[0] for s in held] == [408] * MAX_IN_FLIGHT
    finally:
        for s in held:
            s.close()
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_a_client_gone_mid_body_is_one_log_line(served):
    with _slow_client(served.port, sent=10, declared=777):
        pass  # closed with 767 bytes owed

    def line() -> list[str]:
        return [x for x in served.log_text().splitlines() if "disconnected after 10 of 777 body bytes" in x]

    _wait_for(line, served)
    [logged] = line()
    assert "POST /predict" in logged
    assert httpx.get(f"{served.url}/health").status_code == 200


def _wait_for(condition, served: Served, give_up: float = 60):
    deadline = time.monotonic() + give_up
    while not (result := condition()):
        assert served.proc.poll() is None and time.monotonic() < deadline, served.log_text()
        time.sleep(0.05)
    return result


def test_credentials_in_uris_never_reach_an_answer_or_a_log(tmp_path):
    """The registry, the online store and the lake each named with a password, none reachable: the
    service starts, says what's wrong, and never shows the password."""
    registry_port, store_port = free_port(), free_port()  # nothing listens on either
    env = {
        "ML_ASSETS_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"http://fraud-ops:{PASSWORD}@127.0.0.1:{registry_port}",
        "ML_ASSETS_ONLINE_STORE": f"redis://fraud:{PASSWORD}@127.0.0.1:{store_port}/0",
        "ML_ASSETS_LAKE_URI": f"s3://lake?secret_access_key={PASSWORD}",
        "ML_ASSETS_SERVING_SCORING_TOKEN": SCORING,
        "ML_ASSETS_SERVING_OPERATIONS_TOKEN": OPERATIONS,
        # MLflow's own knobs: fail a registry call at once rather than after minutes of retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    served = _serve(tmp_path, env)
    try:
        ops, scoring = _bearer(OPERATIONS), _bearer(SCORING)
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers = [
                client.get("/health"),
                client.get("/health/details", headers=ops),
                client.get("/model", headers=ops),
                client.get("/openapi.json", headers=ops),
                client.post("/predict", json=tx(1), headers=scoring),
                client.post("/predict", json=tx(1)),
                client.get("/nowhere", headers=ops),
            ]
        texts = [f"{r.headers}\n{r.text}" for r in answers]
        assert [r.status_code for r in answers] == [503, 503, 200, 200, 503, 401, 404]
        assert all(PASSWORD not in t and "fraud-ops" not in t for t in texts), texts
        assert answers[0].json() == {"status": "not_ready"}  # no details without a token
        details, model = answers[1].json(), answers[2].json()
        assert details["registry"]["error"] and details["online_store"]["url"].startswith("redis://***@")
        assert model["registry"]["tracking_store"] == f"http://127.0.0.1:{registry_port}"
        assert "no model to serve" in answers[4].json()["error"]
        _wait_for(lambda: "registry poll failed" in served.log_text(), served)
    finally:
        _stop(served)
    logged = served.log_text()
    assert PASSWORD not in logged and "fraud-ops" not in logged
    # They were logged, redacted: the settings line names both stores.
    assert f"http://***@127.0.0.1:{registry_port}" in logged
    assert f"redis://***@127.0.0.1:{store_port}" in logged


def test_off_loopback_it_refuses_to_start_without_tokens(monkeypatch, capsys, tmp_path):
    """The entry point's checks, before anything is bound or imported beyond the settings."""
    from ml_assets.serving import auth
    from ml_assets.serving.__main__ import main

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit:
            main(list(argv))
        assert exit.value.code == 2
        return capsys.readouterr().err

    for name in [n for n in os.environ if n.startswith("ML_ASSETS_SERVING_")]:
        monkeypatch.delenv(name)
    assert "refusing to serve on 0.0.0.0 without authentication" in refused("--host", "0.0.0.0")
    assert "--insecure" in refused("--host", "10.1.2.3")
    assert auth.refusal("0.0.0.0", {"scoring": (), "operations": ()}, insecure=True) is None
    assert auth.refusal("0.0.0.0", {"scoring": (SCORING,), "operations": ()}, insecure=False) is None
    assert all(auth.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(auth.is_loopback(h) for h in ("0.0.0.0", "::", "", "example.internal", "192.168.1.4"))
    # Tokens the service can't start with: each refusal names the setting, never the token.
    monkeypatch.setenv("ML_ASSETS_SERVING_SCORING_TOKEN", "short")
    assert "at least 16 characters" in refused()
    monkeypatch.setenv("ML_ASSETS_SERVING_SCORING_TOKEN", OPERATIONS)
    monkeypatch.setenv("ML_ASSETS_SERVING_OPERATIONS_TOKEN", OPERATIONS)
    message = refused()
    assert "in both scopes" in message and OPERATIONS not in message
    monkeypatch.setenv("ML_ASSETS_SERVING_SCORING_TOKEN_FILE", str(tmp_path / "missing"))
    assert "are both set" in refused()
    monkeypatch.delenv("ML_ASSETS_SERVING_SCORING_TOKEN")
    assert "can't read the scoring token file" in refused()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("ML_ASSETS_SERVING_SCORING_TOKEN_FILE", str(tmp_path / "empty"))
    assert "token file is empty" in refused()


def test_without_tokens_on_loopback_everything_is_open(tmp_path):
    """Authentication off (no token configured, the default on loopback): the operations paths
    answer without a token, as the other serving tests rely on."""
    from ml_assets_tests.serving_support import service_and_server

    registry = shared_registry()
    _, server = service_and_server(registry, registry.register(aliases={"champion": 1}), str(tmp_path))
    with server, httpx.Client(base_url=server.url) as client:
        statuses = [client.get(p).status_code for p in ["/health", *OPERATION_PATHS]]
        assert statuses == [200] * (1 + len(OPERATION_PATHS))
        assert client.post("/predict", json=tx(1)).status_code == 200
        assert "server" not in client.get("/health").headers
