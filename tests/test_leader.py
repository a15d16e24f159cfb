"""Leader election: the pure decisions over a fake clock, the write fence and the client's write path (its paged
reads and dry run too), and two electors over an in-memory Lease store."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from gpu_operator.apply import Applier
from gpu_operator.kube import CONNECT_RETRIES, ApiError, DryRunKube, Fence, Kube, NotLeader, Unreachable
from gpu_operator.leader import (
    LEASE_DURATION_S,
    RENEW_DEADLINE_S,
    RENEW_PERIOD_S,
    REQUEST_TIMEOUT_S,
    RETRY_S,
    Action,
    Elector,
    Observation,
    Record,
    decide,
    lease_body,
    next_wait,
    observe,
    still_leading,
)
from gpu_operator.nodes import GPU_PRESENT, deploy_label
from gpu_operator.runtime import Operator


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- pure decisions ---


def test_observed_time_moves_only_when_the_record_changes() -> None:
    rec = Record(holder="a", renew_time="t1")
    first = observe(None, rec, 10.0)
    assert observe(first, Record(holder="a", renew_time="t1"), 20.0) is first
    renewed = observe(first, Record(holder="a", renew_time="t2"), 20.0)
    assert renewed.since == 20.0
    # The Lease deleted: the record read last stands until it runs out (its holder may still write), not after.
    assert observe(renewed, None, 25.0) is renewed
    assert observe(renewed, None, 20.0 + LEASE_DURATION_S) == Observation(None, 20.0 + LEASE_DURATION_S)
    released = observe(renewed, Record(holder="", duration_s=1), 26.0)
    assert observe(released, None, 26.5) == Observation(None, 26.5)


def test_decisions() -> None:
    assert decide(Observation(None, 0.0), "me", 0.0) is Action.CREATE
    assert decide(Observation(Record(holder="me"), 0.0), "me", 100.0) is Action.RENEW
    assert decide(Observation(Record(holder=""), 0.0), "me", 0.0) is Action.TAKE, "released: at once"
    held = Observation(Record(holder="other"), 50.0)
    assert decide(held, "me", 50.0 + LEASE_DURATION_S - 0.01) is Action.WAIT
    assert decide(held, "me", 50.0 + LEASE_DURATION_S) is Action.TAKE
    short = Observation(Record(holder="other", duration_s=1), 50.0)  # a release sets a 1 s duration
    assert decide(short, "me", 51.0) is Action.TAKE


def test_the_leader_stops_before_anyone_may_take_over() -> None:
    sent = 100.0  # the leader sent its last successful renew
    observed = sent + 0.001  # a follower read the result, necessarily later
    assert still_leading(sent, sent + RENEW_DEADLINE_S - 0.01)
    assert not still_leading(sent, sent + RENEW_DEADLINE_S)
    first_take = observed + LEASE_DURATION_S
    assert sent + RENEW_DEADLINE_S <= first_take - 4.9
    assert decide(Observation(Record(holder="old"), observed), "new", first_take - 0.01) is Action.WAIT


def test_waits() -> None:
    assert next_wait(True, True, None, 0.0, 0.0) == RENEW_PERIOD_S
    # Counted from when the last renew was sent: a renew answered 3 s later is followed by one 2 s later.
    assert next_wait(True, True, None, 3.0, 0.0) == RENEW_PERIOD_S - 3.0
    assert next_wait(True, True, None, RENEW_PERIOD_S + 1, 0.0) == 0.0
    assert next_wait(True, False, None, 0.0, 0.0) == RETRY_S
    held = Observation(Record(holder="other"), 10.0)
    assert next_wait(False, False, held, 11.0, 0.0) == RETRY_S
    assert next_wait(False, False, held, 10.0 + LEASE_DURATION_S - 0.25, 0.0) == pytest.approx(0.25)
    # Run out already: this look tried to take it over and failed, or could not read it; no busy loop.
    assert next_wait(False, False, held, 10.0 + LEASE_DURATION_S, 0.0) == RETRY_S
    assert next_wait(False, False, held, 10.0 + LEASE_DURATION_S + 3, 0.0) == RETRY_S


def test_lease_bodies() -> None:
    prev = {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"}}
    rec = Record(holder="a", acquire_time="2026-01-01T00:00:00.000000Z", transitions=2)
    renew = lease_body(prev, rec, "a", Action.RENEW, "ns", "l", at=0.0)
    assert renew["metadata"]["resourceVersion"] == "7"
    assert renew["spec"]["acquireTime"] == rec.acquire_time and renew["spec"]["leaseTransitions"] == 2
    assert renew["spec"]["renewTime"] == "1970-01-01T00:00:00.000000Z"
    take = lease_body(prev, rec, "b", Action.TAKE, "ns", "l", at=0.0)
    assert take["spec"]["holderIdentity"] == "b" and take["spec"]["leaseTransitions"] == 3
    assert take["spec"]["acquireTime"] == take["spec"]["renewTime"]
    create = lease_body(None, Record(), "a", Action.CREATE, "ns", "l", at=0.0)
    assert "resourceVersion" not in create["metadata"] and create["spec"]["leaseDurationSeconds"] == 15


# --- the fence ---


def test_fence_lets_writes_through_only_until_its_deadline() -> None:
    clock = Clock()
    fence = Fence(clock)
    with pytest.raises(NotLeader):
        with fence.write("PATCH x"):
            pass
    fence.extend(clock.t + 10)
    with fence.write("PATCH x"):
        pass
    clock.t += 10
    with pytest.raises(NotLeader):
        with fence.write("PATCH x"):
            pass


def test_fence_drain_waits_for_writes_in_flight() -> None:
    fence = Fence()
    fence.extend(float("inf"))
    entered, leave = threading.Event(), threading.Event()

    def writer() -> None:
        with fence.write("PUT y"):
            entered.set()
            leave.wait(5)

    t = threading.Thread(target=writer)
    t.start()
    entered.wait(5)
    fence.close()
    assert not fence.drain(0.05), "a write is still in flight"
    leave.set()
    assert fence.drain(5)
    t.join()


def test_a_closed_fence_stays_closed_whatever_renew_lands_after() -> None:
    """A renew in the elector thread that was under way when the fence closed (step_down, a lost Lease) extended it
    again: Fence.extend took max(-inf, deadline), opening it for another 10 s."""
    clock = Clock()
    fence = Fence(clock)
    fence.extend(clock.t + 10)
    fence.close()
    fence.extend(clock.t + 10)
    assert not fence.is_open()
    with pytest.raises(NotLeader):
        with fence.write("PATCH x"):
            pass


# --- the client's write path: requests the API server asks to send again ---


class _Answer:
    """A response as the kubernetes client's rest client returns it."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status, self.reason, self.headers = status, "", headers or {}
        body = {"kind": "Status", "code": status, "message": "Too many requests, please try again later."}
        self.data = json.dumps(body if status >= 300 else {"kind": "ConfigMap", "metadata": {"name": "x"}}).encode()

    def read(self) -> bytes:
        return self.data

    def getheader(self, name: str, default: Any = None) -> Any:
        return self.headers.get(name, default)


def _client(monkeypatch: pytest.MonkeyPatch, *answers: _Answer) -> tuple[Kube, list[str], list[float]]:
    """A Kube whose requests get `answers` in turn; what it sent and how long it slept."""
    kube = Kube(client.ApiClient(client.Configuration(host="https://api.example:6443")))
    left, sent, slept = list(answers), [], []

    def request(method: str, url: str, **_: Any) -> _Answer:
        sent.append(method)
        return left.pop(0)

    monkeypatch.setattr(kube.client.rest_client, "request", request)
    monkeypatch.setattr("time.sleep", slept.append)
    return kube, sent, slept


def test_a_request_turned_away_with_429_is_sent_again_after_the_wait_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """API Priority and Fairness answers 429 with Retry-After when our flow is over its share. It was raised at
    once: an apply reported as refused (the state notReady with a Warning Event), a node patch or a status write
    failing the whole pass. client-go waits Retry-After and sends again, up to 10 times (rest/with_retry.go)."""
    kube, sent, slept = _client(monkeypatch, _Answer(429, {"Retry-After": "1"}), _Answer(200))
    kube.fence = Fence()
    kube.fence.extend(float("inf"))
    assert kube.request("PATCH", "/api/v1/namespaces/gpu-operator/configmaps/x", {})["metadata"]["name"] == "x"
    assert sent == ["PATCH", "PATCH"] and 1 <= slept[0] <= 1.1
    assert kube.writes() == 2  # each one sent is counted (and passed the fence)

    kube, sent, slept = _client(monkeypatch, _Answer(503, {"Retry-After": "30"}), _Answer(200))
    kube.request("GET", "/api/v1/namespaces/gpu-operator/configmaps/x", timeout=60)
    assert sent == ["GET", "GET"] and 10 <= slept[0] <= 11, "a 5xx with Retry-After too, its wait capped"

    kube, sent, slept = _client(monkeypatch, _Answer(500))
    with pytest.raises(ApiError):
        kube.request("GET", "/api/v1/namespaces/gpu-operator/configmaps/x")
    assert sent == ["GET"] and not slept, "a 5xx without Retry-After is not"

    kube, sent, slept = _client(monkeypatch, *[_Answer(429, {"Retry-After": "1"})] * 20)
    with pytest.raises(ApiError) as refused:
        kube.request("GET", "/api/v1/namespaces/gpu-operator/configmaps/x")
    assert refused.value.status == 429 and len(sent) == 11, "ten more times at most"
    kube, sent, slept = _client(monkeypatch, *[_Answer(429, {"Retry-After": "1"})] * 20)
    with pytest.raises(ApiError):
        kube.request("GET", "/api/v1/namespaces/gpu-operator/configmaps/x", timeout=3)
    assert len(sent) <= 3 and sum(slept) <= 3, "while the waits fit in the request's timeout"

    # The Eviction API's 429 means a PodDisruptionBudget blocks it: the upgrade planner sees the pod stay.
    kube, sent, slept = _client(monkeypatch, _Answer(429), _Answer(200))
    with pytest.raises(ApiError) as refused:
        kube.evict("workload", "default")
    assert refused.value.status == 429 and sent == ["POST"] and not slept


def test_a_retried_write_passes_the_fence_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader whose fence closed while it waited to send a write again sends nothing more."""
    clock = Clock()
    kube, sent, _ = _client(monkeypatch, _Answer(429, {"Retry-After": "1"}), _Answer(200))
    kube.fence = Fence(clock)
    kube.fence.extend(clock.t + 10)
    monkeypatch.setattr("time.sleep", lambda s: setattr(clock, "t", clock.t + 10))
    with pytest.raises(NotLeader):
        kube.request("PATCH", "/api/v1/namespaces/gpu-operator/configmaps/x", {})
    assert sent == ["PATCH"]


class _Server:
    """A local API server answering each request (method, path, n-th request) as `answer` says: status, headers
    and, for a 2xx, the body (a Pod by default). Requests go through a Kube made by Kube.connect, so through the
    kubernetes client's urllib3 pool as the operator's do. `user`: the kubeconfig's user; `auth`: the Authorization
    header of each request."""

    def __init__(
        self,
        tmp_path: Path,
        answer: Callable[[str, str, int], tuple[int, dict[str, str], bytes]],
        user: dict[str, Any] | None = None,
    ) -> None:
        self.sent: list[str] = []
        self.auth: list[str | None] = []
        self.on_request: Callable[[], None] = lambda: None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if length := int(self.headers.get("Content-Length") or 0):
                    self.rfile.read(length)
                outer.sent.append(self.command)
                outer.auth.append(self.headers.get("Authorization"))
                outer.on_request()
                status, headers, body = answer(self.command, self.path, len(outer.sent))
                if status >= 300:
                    body = json.dumps({"kind": "Status", "code": status, "message": "try again"}).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_DELETE = do_PUT = do_PATCH = do_POST = _answer  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        config = tmp_path / f"kubeconfig-{self.httpd.server_port}"
        config.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.httpd.server_port}"}}],
            "users": [{"name": "u", "user": user or {}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))  # fmt: skip
        self.kube = Kube.connect(str(config))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


POD = json.dumps({"kind": "Pod", "metadata": {"name": "p"}}).encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., _Server]]:
    made: list[_Server] = []

    def make(answer: Callable[[str, str, int], tuple[int, dict[str, str], bytes]], **kw: Any) -> _Server:
        made.append(_Server(tmp_path, answer, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_delete_turned_away_is_not_sent_again_by_the_connection_pool_once_the_fence_closed(server: Any) -> None:
    """Each request Kube.request sends again passes the fence again, but the kubernetes client's urllib3 pool
    (its default Retry(3)) sent a GET, PUT or DELETE answered 429/503 with Retry-After again itself, inside the one
    pass of the fence: a leader whose fence closed meanwhile (Lease lost, or step_down) still deleted."""
    srv = server(lambda method, path, n: (429, {"Retry-After": "0"}, b"") if n == 1 else (200, {}, POD))
    srv.kube.fence = Fence()
    srv.kube.fence.extend(float("inf"))
    srv.on_request = srv.kube.fence.close  # the Lease is lost while the first DELETE is answered
    with pytest.raises(NotLeader):
        srv.kube.request("DELETE", "/api/v1/namespaces/gpu-operator/pods/nvidia-driver-daemonset-abcde")
    assert srv.sent == ["DELETE"], "the DELETE was sent again after the fence closed"


def _plain_http_kube(tmp_path: Path, port: int) -> Kube:
    """A Kube from a kubeconfig naming http://127.0.0.1:<port>, no credentials."""
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return Kube.connect(str(config))


def test_a_write_whose_connection_is_made_after_the_fence_closed_is_not_sent(tmp_path: Path) -> None:
    """No write reaches the API server after the leader's fence closed (README "Two replicas: leader election":
    every write passes a fence "checked just before the request goes out", so "the old leader has stopped writing 5 s
    before anyone may start").

    Kube.request checked the fence before the kubernetes client's urllib3 pool opened a connection, and that
    connection could take up to the request's whole timeout (30 s for a write) to be made: SYNs dropped (a network
    blip between the leader's node and the API server, a full accept queue) are sent again after 1, 3, 7, 15 s. The
    pool's Retry(3) (SEND_AGAIN_ONLY_UNSENT) then tried three more connections, each as long. A write that passed the
    fence just before its deadline was sent when the connection was finally made, after the follower may have taken
    the Lease (15 s after the last renew; the fence gives 5 s of margin). Here the API server's accept queue is full for
    about 1.5 s and the fence closes 0.3 s after the write passed it: the write arrived seconds after that (when a SYN
    sent again got through). Now a fenced write's connect timeout is what the fence has left, and its connection is
    tried again only after the fence is checked again."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue: the next SYN is dropped and sent again a second later
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    received: list[tuple[float, bytes]] = []
    stop = threading.Event()

    def serve() -> None:
        time.sleep(1.5)  # the queue is drained now: the client's next SYN gets through
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(1.0)
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if data:
                received.append((time.monotonic(), data.split(b"\r\n", 1)[0]))
                body = json.dumps({"kind": "Pod", "metadata": {"name": "p"}}).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                conn.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    kube = _plain_http_kube(tmp_path, port)
    kube.fence = Fence()
    kube.fence.extend(time.monotonic() + 0.3)  # the leader's renew deadline, 0.3 s away
    closes_at = kube.fence.until
    try:
        try:
            kube.request("DELETE", "/api/v1/namespaces/gpu-operator/pods/nvidia-driver-daemonset-abcde", timeout=10)
        except Exception:  # noqa: BLE001 - refused or cut: what matters is what reached the server
            pass
    finally:
        stop.set()
        server.join(5)
        listener.close()
        for s in fillers:
            s.close()
    late = [(round(at - closes_at, 2), line) for at, line in received if at > closes_at]
    assert not late, f"a write reached the API server after the fence closed (seconds after, request line): {late}"


def test_a_fenced_write_whose_connection_is_refused_is_tried_again_only_through_the_fence(tmp_path: Path) -> None:
    """The pool no longer tries a fenced write's connection again itself: Kube.request does, as often as the pool
    did (CONNECT_RETRIES), each time through the fence, and counts the write once."""
    port_socket = socket.socket()
    port_socket.bind(("127.0.0.1", 0))
    port = port_socket.getsockname()[1]
    port_socket.close()  # nothing listens there: every connection is refused at once
    kube = _plain_http_kube(tmp_path, port)
    fence = kube.fence = Fence()
    fence.extend(float("inf"))
    passes: list[str] = []
    write = fence.write
    close_after_first = False

    def counted(what: str) -> Any:
        passes.append(what)
        if close_after_first and len(passes) > 1:
            fence.close()  # the Lease lost after the first connection was refused
        return write(what)

    fence.write = counted  # type: ignore[method-assign]
    with pytest.raises(Unreachable, match="refused"):
        kube.request("DELETE", "/api/v1/namespaces/gpu-operator/pods/p")
    assert len(passes) == 1 + CONNECT_RETRIES and kube.writes() == 1

    passes.clear()
    close_after_first = True
    with pytest.raises(NotLeader):
        kube.request("DELETE", "/api/v1/namespaces/gpu-operator/pods/p")
    assert len(passes) == 2, "no second connection once the fence closed"


def test_a_get_turned_away_is_sent_at_most_eleven_times_with_waits_of_at_most_ten_seconds(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RETRIES and MAX_RETRY_AFTER_S held only for what the connection pool handed back: it sent a GET, PUT or
    DELETE 4 times per Kube attempt (44 in all), sleeping the Retry-After the server named, uncapped (a 503 with
    Retry-After: 60 was three 60 s sleeps for the Elector's 5 s Lease requests, past its renew deadline)."""
    srv = server(lambda method, path, n: (429, {"Retry-After": "0"}, b""))
    with pytest.raises(ApiError) as refused:
        srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert refused.value.status == 429 and len(srv.sent) == 11

    slept: list[float] = []
    srv = server(lambda method, path, n: (503, {"Retry-After": "60"}, b"") if n == 1 else (200, {}, POD))
    monkeypatch.setattr("time.sleep", slept.append)
    srv.kube.request("GET", "/apis/coordination.k8s.io/v1/namespaces/gpu-operator/leases/x", timeout=60)
    assert srv.sent == ["GET", "GET"] and len(slept) == 1 and 10 <= slept[0] <= 11


def test_a_watch_turned_away_is_sent_again_after_the_wait_it_names(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection pool no longer sends anything again once answered; a watch answered 429 (API Priority and
    Fairness) is still sent again after the wait, not failed (which lists the whole collection again)."""
    added = json.dumps({"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "p"}}}).encode() + b"\n"
    srv = server(lambda method, path, n: (429, {"Retry-After": "3"}, b"") if n == 1 else (200, {}, added))
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    events = list(srv.kube.watch("/api/v1/namespaces/gpu-operator/pods", "1", timeout_seconds=1))
    assert [e["object"]["metadata"]["name"] for e in events] == ["p"]
    assert srv.sent == ["GET", "GET"] and len(slept) == 1 and 3 <= slept[0] <= 3.3
    assert srv.kube.requests[("WATCH", "pods")] == 2


def test_a_watch_answered_200_with_a_web_page_is_one_error_line(server: Any) -> None:
    """A plain request answered 200 with something other than JSON (a proxy's sign-in page) was already one
    Unreachable line naming the URL and the Content-Type; a watch so answered raised json.JSONDecodeError
    (`Expecting value: line 1 column 1 (char 0)`), naming neither. Now the watch gives the same line."""
    page = b"<html>\n<head><title>Sign in</title></head>\n<body>\n<h1>Sign in</h1>\n</body>\n</html>\n"
    srv = server(lambda method, path, n: (200, {"Content-Type": "text/html"}, page))
    path = "/api/v1/namespaces/gpu-operator/pods"
    with pytest.raises(Unreachable) as refused:
        list(srv.kube.watch(path, "1", timeout_seconds=1))
    assert str(refused.value) == f"WATCH {srv.kube.host}{path}: answered 200 text/html, not JSON: is this a " \
        "Kubernetes API server?"  # fmt: skip
    with pytest.raises(Unreachable) as request_refused:  # as a plain request says it
        srv.kube.request("GET", path)
    assert str(request_refused.value) == str(refused.value).replace("WATCH", "GET", 1)
    bad = b'{"type": "ADDED", "object": {\n'  # JSON said, not JSON sent: the decoder's own error, as a request's
    srv = server(lambda method, path, n: (200, {}, bad))
    with pytest.raises(ValueError):
        list(srv.kube.watch(path, "1", timeout_seconds=1))


def test_a_token_file_is_read_again_when_a_minute_old_and_at_once_on_a_401(server: Any, tmp_path: Path) -> None:
    """A kubeconfig's tokenFile was read once (the in-cluster token, which the kubelet rotates, once a minute with
    no look after a 401): once the old token expired, every request was answered 401 until a restart. Now the file
    is read again when a minute old, and on a 401 at once, the request then sent again once with the new token."""
    token = tmp_path / "token"
    token.write_text("old")
    valid = ["Bearer old"]
    srv = server(lambda method, path, n: (200, {}, POD) if srv.auth[-1] in valid else (401, {}, b""),
                 user={"tokenFile": "token"})  # fmt: skip
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    token.write_text("new\n")  # rotated (the line's end is no part of it); the old one no longer works
    valid[:] = ["Bearer new"]
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert srv.auth == ["Bearer old", "Bearer old", "Bearer new"]
    assert srv.kube.token_file is not None and srv.kube.token_file.path == str(token)
    now = [0.0]
    srv.kube.token_file.clock = lambda: now[0]
    srv.kube.token_file.reread()

    token.write_text("newer")  # rotated while the old one still works: read again when a minute old
    valid.append("Bearer newer")
    now[0] += 30
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    now[0] += 30
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert srv.auth[3:] == ["Bearer new", "Bearer newer"]

    valid.clear()  # a 401 with the file unchanged is not sent again
    with pytest.raises(ApiError) as refused:
        srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert refused.value.status == 401 and srv.auth[5:] == ["Bearer newer"]

    added = json.dumps({"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "p"}}}).encode() + b"\n"
    srv = server(lambda method, path, n: (200, {}, added) if srv.auth[-1] in valid else (401, {}, b""),
                 user={"tokenFile": str(token)})  # fmt: skip
    token.write_text("newest")  # a watch answered 401 is sent again too
    valid.append("Bearer newest")
    events = list(srv.kube.watch("/api/v1/namespaces/gpu-operator/pods", "1", timeout_seconds=1))
    assert len(events) == 1 and srv.auth == ["Bearer newer", "Bearer newest"]


def test_a_token_in_the_kubeconfig_or_from_an_unreadable_file_stays_as_it_was(server: Any, tmp_path: Path) -> None:
    """A static token is sent as before, with no file to read; a token file gone or emptied keeps the last token."""
    srv = server(lambda method, path, n: (200, {}, POD), user={"token": "static"})
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert getattr(srv.kube, "token_file", None) is None and srv.auth == ["Bearer static"]
    token = tmp_path / "token"
    token.write_text("t1")
    srv = server(lambda method, path, n: (200, {}, POD), user={"tokenFile": str(token)})
    assert srv.kube.token_file is not None
    token.write_text("")
    assert not srv.kube.token_file.reread()
    token.unlink()
    assert not srv.kube.token_file.reread()
    srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
    assert srv.auth == ["Bearer t1"]


def test_the_in_cluster_token_file_is_the_one_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the cluster the token is the ServiceAccount's projected one, which the kubelet rotates."""
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-1")
    ca.write_text("not read here")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    kube = Kube.connect(resume_tls=False)
    assert kube.token_file is not None and kube.token_file.path == str(token)
    assert kube._headers(None)["authorization"] == "Bearer sa-1"
    token.write_text("sa-2")
    assert kube.token_file.reread() and kube._headers(None)["authorization"] == "Bearer sa-2"


# --- the client's reads: a paged list, and the dry run's answers to its writes ---


def test_a_list_of_several_pages_returns_every_page(server: Any) -> None:
    """Kube.list and Kube.each return the objects of every page, asking each page once with the continue token
    of the one before, and stop after the page that has none."""
    asked: list[dict[str, list[str]]] = []

    def answer(method: str, path: str, n: int) -> tuple[int, dict[str, str], bytes]:
        asked.append(parse_qs(urlsplit(path).query))
        if len(asked) > 2:
            return 500, {}, b""  # listed on past the last page
        names, meta = (["c"], {}) if "continue" in asked[-1] else (["a", "b"], {"continue": "t1"})
        items = [{"kind": "Pod", "metadata": {"name": name}} for name in names]
        return 200, {}, json.dumps({"items": items, "metadata": {"resourceVersion": "5", **meta}}).encode()

    srv = server(answer)
    assert [p["metadata"]["name"] for p in srv.kube.list("Pod")] == ["a", "b", "c"]
    assert asked == [{"limit": ["500"]}, {"limit": ["500"], "continue": ["t1"]}]
    asked.clear()
    assert [p["metadata"]["name"] for p in srv.kube.each("Pod")] == ["a", "b", "c"]
    assert len(asked) == 2


def test_a_paged_list_whose_continue_token_expired_is_listed_again_whole(server: Any) -> None:
    """A paged list whose continue token the API server no longer takes (410 Expired: etcd compacted past the
    first page's resourceVersion, in a listing longer than the compaction window) raised the ApiError out of
    Kube.list and Kube.each: the pass reading it failed, or the command (doctor, upgrade plan) ended with the error.
    client-go's pager (tools/pager, FullListIfExpired) lists the whole collection again in one request instead;
    each yields only the objects it had not yielded yet."""
    asked: list[dict[str, list[str]]] = []

    def answer(method: str, path: str, n: int) -> tuple[int, dict[str, str], bytes]:
        asked.append(parse_qs(urlsplit(path).query))
        if "continue" in asked[-1]:
            return 410, {}, b""
        names, meta = (["a"], {"continue": "t1"}) if "limit" in asked[-1] else (["a", "b"], {})
        items = [{"kind": "Pod", "metadata": {"name": name}} for name in names]
        return 200, {}, json.dumps({"items": items, "metadata": {"resourceVersion": "5", **meta}}).encode()

    srv = server(answer)
    assert [p["metadata"]["name"] for p in srv.kube.list("Pod")] == ["a", "b"]
    assert asked == [{"limit": ["500"]}, {"limit": ["500"], "continue": ["t1"]}, {}]
    assert [p["metadata"]["name"] for p in srv.kube.each("Pod")] == ["a", "b"]  # a once


def test_a_dry_run_merge_patch_answers_with_the_object_as_read_with_the_patch_applied(server: Any) -> None:
    """DryRunKube (render --from-cluster) answered every merge patch with {}: Applier.patch_nodes handed the pass
    a node named "" without labels for each node it would label, and the pass counted readiness over that node, not
    over the node with the labels it would set. The answer is now what the API server's would be: the object as
    read, with the patch applied (RFC 7386); one not there (a --policy file's) as if it were."""
    driver = deploy_label("driver")
    live = {"kind": "Node", "metadata": {"name": "gpu-1", "labels": {GPU_PRESENT: "true", driver: "false"}}}
    srv = server(lambda method, path, n: (200, {}, json.dumps(live).encode()) if path.endswith("/nodes/gpu-1")
                 else (404, {}, b""))  # fmt: skip
    dry = DryRunKube(srv.kube.client)
    [patched] = Applier(dry).patch_nodes({"gpu-1": {"labels": {driver: "true", deploy_label("dcgm"): None}}})
    assert patched.name == "gpu-1" and patched.labels[GPU_PRESENT] == "true" and patched.labels[driver] == "true"
    assert srv.sent == ["GET"]  # the patch itself only recorded
    assert [(verb, path) for verb, path, _ in dry.recorded] == [("PATCH", "/api/v1/nodes/gpu-1")]
    answer = dry.merge_patch("ClusterPolicy", "from-file", {"status": {"state": "ready"}}, sub="status")
    assert answer == {"metadata": {"name": "from-file"}, "status": {"state": "ready"}}


# --- two electors over one in-memory Lease (resourceVersion conflicts as the API server answers them) ---


class LeaseStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.refuse_writes = False  # answer every write 500 (an API server under load)
        self.writes = 0
        self.events: list[str] = []


class FakeKube:
    def __init__(self, store: LeaseStore):
        self.store = store

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30, **_: Any) -> Any:
        s = self.store
        if s.down:
            raise ApiError(503, '{"message": "unavailable"}', f"{method} {path}")
        if path.endswith("/events"):
            s.events.append(body["message"])
            return body
        if method == "GET":
            if s.lease is None:
                raise ApiError(404, '{"message": "not found"}', path)
            return copy.deepcopy(s.lease)
        s.writes += 1
        if s.refuse_writes:
            raise ApiError(500, '{"message": "etcdserver: request timed out"}', f"{method} {path}")
        if method == "POST":
            if s.lease is not None:
                raise ApiError(409, '{"message": "already exists"}', path)
        elif s.lease is None or body["metadata"].get("resourceVersion") != s.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, '{"message": "conflict"}', path)
        s.rv += 1
        s.lease = copy.deepcopy(body)
        s.lease["metadata"]["resourceVersion"] = str(s.rv)
        return copy.deepcopy(s.lease)


class Replica:
    def __init__(self, name: str, store: LeaseStore, clock: Clock):
        self.fence = Fence(clock)
        self.started = 0
        self.lost: list[str] = []
        self.elector = Elector(FakeKube(store), "ns", name, self.fence, self._started, self.lost.append,  # type: ignore[arg-type]
                               clock=clock)  # fmt: skip
        self.next = clock.t
        self.alive = True

    def _started(self) -> None:
        self.started += 1


def run_until(replicas: list[Replica], clock: Clock, until: float, tick: float = 0.1) -> list[set[str]]:
    """Step each live replica when its wait is over; the set of open fences at every tick."""
    open_fences = []
    while clock.t < until:
        for r in replicas:
            if r.alive and not r.elector.stop.is_set() and clock.t >= r.next:
                renewed = r.elector.step()
                if r.elector.event_thread is not None:  # the "became leader" Event, posted on its own thread
                    r.elector.event_thread.join()
                wait = next_wait(r.elector.leading, renewed, r.elector.obs, clock.t, r.elector.last_renew)
                r.next = clock.t + max(tick, wait)
        open_fences.append({r.elector.me for r in replicas if r.fence.is_open()})
        clock.t += tick
    return open_fences


def test_one_leader_takes_over_when_the_other_dies_and_fences_never_overlap() -> None:
    clock, store = Clock(), LeaseStore()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    fences = run_until([a, b], clock, clock.t + 30)
    assert store.lease and store.lease["spec"]["holderIdentity"] == "a"
    assert (a.started, b.started) == (1, 0) and all(f == {"a"} for f in fences[1:])
    assert store.events == ["a became leader"]
    died = clock.t
    a.alive = False  # SIGKILL: no release
    fences = run_until([a, b], clock, clock.t + 30)
    took = next(i for i, f in enumerate(fences) if "b" in f) * 0.1
    assert LEASE_DURATION_S - RENEW_PERIOD_S <= took <= LEASE_DURATION_S + 0.2, took
    assert all(len(f) <= 1 for f in fences)
    assert store.lease["spec"]["holderIdentity"] == "b" and store.lease["spec"]["leaseTransitions"] == 1
    assert clock.t > died


def test_a_paused_leader_is_fenced_before_the_other_takes_over_and_then_exits() -> None:
    clock, store = Clock(), LeaseStore()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    run_until([a, b], clock, clock.t + 10)
    a.alive = False  # SIGSTOP: a's threads stop, its fence stays as it was
    fences = run_until([a, b], clock, clock.t + 25)
    assert store.lease and store.lease["spec"]["holderIdentity"] == "b"
    assert all(len(f) <= 1 for f in fences), "never two replicas allowed to write"
    a.alive = True  # SIGCONT: its fence is past its deadline already, then it sees b holds the Lease
    assert not a.fence.is_open()
    run_until([a, b], clock, clock.t + 2)
    assert a.lost and "held by b" in a.lost[0] and not a.elector.leading
    assert b.fence.is_open()


def test_renew_failures_past_the_deadline_end_leadership() -> None:
    clock, store = Clock(), LeaseStore()
    a = Replica("a", store, clock)
    run_until([a], clock, clock.t + 6)
    assert a.elector.leading
    store.down = True
    fences = run_until([a], clock, clock.t + RENEW_DEADLINE_S + 2)
    assert a.lost and "no renew succeeded" in a.lost[0]
    assert not a.fence.is_open()
    closed_at = next(i for i, f in enumerate(fences) if not f) * 0.1
    assert closed_at <= RENEW_DEADLINE_S, "the fence closes by the deadline, whatever the elector thread does"


class SlowKube(FakeKube):
    """The in-memory Lease store behind an API server that answers each Lease request after `latency` seconds (by the
    fake clock), sampling the leader's fence every 0.05 s while the request is under way."""

    def __init__(self, store: LeaseStore, clock: Clock, latency: float, samples: list[tuple[float, bool]]):
        super().__init__(store)
        self.clock, self.latency, self.samples = clock, latency, samples
        self.fence: Fence | None = None

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30, **kw: Any) -> Any:
        assert self.latency < timeout, "each request answers within its own timeout"
        end = self.clock.t + (0 if path.endswith("/events") else self.latency)  # the Event: on another thread
        while self.clock.t < end:
            if self.fence is not None:
                self.samples.append((self.clock.t, self.fence.is_open()))
            self.clock.t = min(end, self.clock.t + 0.05)
        return super().request(method, path, body, timeout, **kw)


def test_a_leader_whose_lease_requests_are_slow_but_succeed_keeps_its_fence_open() -> None:
    """A leader whose every renew succeeds, each Lease request answered well within REQUEST_TIMEOUT_S, never has its
    write fence closed: it is still the only holder, and a closed fence cuts its reconcile pass (NotLeader) and fails
    its between-pass label patches. The next renew was RENEW_PERIOD_S after the *end* of the last one while the fence
    runs RENEW_DEADLINE_S from its *start*: with a GET and a PUT of the Lease taking 1.5 s each, the fence closed for
    1 s in every 8 s. Now the next renew is RENEW_PERIOD_S after the last one was sent (as client-go's RetryPeriod
    ticks), and the fence stays open while a GET and a PUT take less than RENEW_DEADLINE_S - RENEW_PERIOD_S."""
    clock, store, samples = Clock(), LeaseStore(), []
    kube = SlowKube(store, clock, latency=1.5, samples=samples)
    fence = Fence(clock)
    lost: list[str] = []
    elector = Elector(kube, "ns", "a", fence, lambda: None, lost.append, clock=clock)  # type: ignore[arg-type]
    kube.fence = fence
    assert 2 * 1.5 < REQUEST_TIMEOUT_S and 2 * 1.5 < RENEW_DEADLINE_S - RENEW_PERIOD_S
    end = clock.t + 60
    while clock.t < end:  # Elector.run, by the fake clock
        renewed = elector.step()
        stop = clock.t + next_wait(elector.leading, renewed, elector.obs, clock.t, elector.last_renew)
        while clock.t < stop:
            samples.append((clock.t, fence.is_open()))
            clock.t = min(stop, clock.t + 0.05)
    assert elector.leading and not lost and store.writes >= 5, "every renew succeeded"
    began = next(t for t, is_open in samples if is_open)
    closed = [round(t - began, 2) for t, is_open in samples if t >= began and not is_open]
    assert not closed, (
        f"the fence of a leader whose renews all succeed closed {len(closed) * 0.05:.1f} s in 60 s "
        f"(first at +{closed[0]} s after it began leading)"
    )
    assert 11 <= store.writes <= 13, "a renew every RENEW_PERIOD_S, no more often"


def test_the_became_leader_event_does_not_hold_up_the_renew() -> None:
    """The "became leader" Event was POSTed inside the renew step (up to 5 s): the first renew after it came that
    much later. Now it goes out on its own thread."""
    posting = threading.Event()
    answer = threading.Event()

    class StuckEvents(FakeKube):
        def request(self, method: str, path: str, body: Any = None, timeout: float = 30, **kw: Any) -> Any:
            if path.endswith("/events"):
                posting.set()
                answer.wait(10)
            return super().request(method, path, body, timeout, **kw)

    clock, store = Clock(), LeaseStore()
    elector = Elector(StuckEvents(store), "ns", "a", Fence(clock), lambda: None, print, clock=clock)  # type: ignore[arg-type]
    assert elector.step() and elector.leading, "the step returns while the Event's POST is under way"
    assert posting.wait(5) and store.events == []
    answer.set()
    assert elector.event_thread is not None
    elector.event_thread.join(5)
    assert store.events == ["a became leader"]


def test_release_hands_over_at_once() -> None:
    clock, store = Clock(), LeaseStore()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    run_until([a, b], clock, clock.t + 7)
    a.fence.close()
    assert a.elector.release()
    assert store.lease and store.lease["spec"]["holderIdentity"] == ""
    fences = run_until([a, b], clock, clock.t + RETRY_S + 0.3)
    assert fences[-1] == {"b"} and not a.lost
    assert store.events[-2:] == ["a stopped leading, releasing the Lease", "b became leader"]


def test_a_renew_while_step_down_drains_does_not_reopen_the_fence_after_the_lease_is_released() -> None:
    """Operator.step_down closes the fence, waits for the writes in flight (up to 5 s), then releases the Lease. The
    elector thread ran until release(): a renew in between (one every 5 s) extended the closed fence for 10 s, and
    b took the released Lease while a's reconcile pass (a thread task.cancel() does not stop) and label threads could
    still write: the two replicas' writes could interleave."""
    clock, store = Clock(), LeaseStore()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    run_until([a, b], clock, clock.t + 7)
    assert a.elector.leading
    drain = a.fence.drain

    def drain_while_the_elector_renews(timeout: float) -> bool:
        a.elector.step()  # the elector thread's periodic renew, due while step_down waits here
        return drain(timeout)

    a.fence.drain = drain_while_the_elector_renews  # type: ignore[method-assign]
    op = SimpleNamespace(elector=a.elector, kube=SimpleNamespace(fence=a.fence))
    asyncio.run(Operator.step_down(op))  # type: ignore[arg-type]
    assert store.lease and store.lease["spec"]["holderIdentity"] == "", "released"
    fences = run_until([a, b], clock, clock.t + RETRY_S + 0.3)
    assert b.elector.leading and not a.fence.is_open()
    assert all(len(f) <= 1 for f in fences), f"two replicas may write at once: {fences}"


def test_a_follower_takes_over_when_the_lease_runs_out_and_retries_a_failed_take_over_every_retry_s() -> None:
    """Waits as Elector.run takes them, no tick: the take-over comes at the instant the dead holder's lease runs
    out; while the API server refuses it, one try every RETRY_S (it was a busy loop: thousands of GET+PUT a second)."""
    def follow(r: Replica, clock: Clock, until: float) -> list[float]:
        waits: list[float] = []
        while clock.t < until:
            renewed = r.elector.step()
            if r.elector.leading:
                break
            waits.append(next_wait(r.elector.leading, renewed, r.elector.obs, clock.t, r.elector.last_renew))
            clock.t += waits[-1]
            assert len(waits) < 1000, "busy loop"
        return waits

    dead = {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"holderIdentity": "dead", "leaseDurationSeconds": LEASE_DURATION_S}}  # fmt: skip
    clock, store = Clock(), LeaseStore()
    store.lease = copy.deepcopy(dead)
    b, start = Replica("b", store, clock), clock.t
    follow(b, clock, start + 30)
    assert b.elector.leading and clock.t == pytest.approx(start + LEASE_DURATION_S)

    clock, store = Clock(), LeaseStore()
    store.lease, store.refuse_writes = copy.deepcopy(dead), True
    b = Replica("b", store, clock)
    waits = follow(b, clock, clock.t + LEASE_DURATION_S + 5)
    assert not b.elector.leading and store.writes == 5 and waits[-5:] == [RETRY_S] * 5
    store.down = True  # nor when the Lease cannot even be read
    assert follow(b, clock, clock.t + 3) == [RETRY_S] * 3


def test_a_deleted_lease_is_not_taken_while_the_old_leader_may_still_write() -> None:
    """The fence's promise (README "Two replicas: leader election"): the old leader has stopped writing before
    anyone may start, as a follower waits out the Lease from when it read the record. A Lease deleted under the
    leader (`kubectl delete lease`, a namespace clean-up tool) broke it: the follower's next look (every RETRY_S)
    found none and created it at once, opening its fence while the leader's stayed open until its next renew found
    another holder (up to RENEW_PERIOD_S later): 4 s of two replicas writing. Now the record last read stands until
    it runs out: the leader's next renew creates the Lease again, and a follower creates it only once the dead
    holder's record has run out."""
    clock, store = Clock(), LeaseStore()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    run_until([a, b], clock, clock.t + 10)
    assert a.elector.leading and a.fence.is_open()
    run_until([a, b], clock, clock.t + 0.6)  # just after a's renew, so its next one is RENEW_PERIOD_S away
    store.lease = None  # deleted by someone else
    fences = run_until([a, b], clock, clock.t + 30)
    both = [i * 0.1 for i, f in enumerate(fences) if len(f) > 1]
    assert not both, f"both replicas could write for {len(both) * 0.1:.1f} s after the Lease was deleted"
    assert store.lease and store.lease["spec"]["holderIdentity"] == "a" and (a.started, b.started) == (1, 0)
    assert all(f == {"a"} for f in fences) and not a.lost

    # The leader dead (SIGKILL) and its Lease deleted: the follower waits the dead holder's record out, then creates it.
    a.alive = False
    died = clock.t
    run_until([a, b], clock, clock.t + 0.5)
    store.lease = None
    fences = run_until([a, b], clock, clock.t + 30)
    took = next(i for i, f in enumerate(fences) if "b" in f) * 0.1 + 0.5
    assert LEASE_DURATION_S - RENEW_PERIOD_S <= took <= LEASE_DURATION_S + 0.2, took
    assert store.lease and store.lease["spec"]["holderIdentity"] == "b" and all(len(f) <= 1 for f in fences)
    assert clock.t > died


def test_simultaneous_starts_elect_one() -> None:
    clock, store = Clock(), LeaseStore()
    replicas = [Replica(n, store, clock) for n in "abc"]
    fences = run_until(replicas, clock, clock.t + 20)
    assert all(len(f) <= 1 for f in fences)
    assert sum(r.started for r in replicas) == 1


def test_concurrent_requests_answered_401_are_all_sent_again_with_the_rotated_token(
    server: Any, tmp_path: Path
) -> None:
    """Two requests in flight with the old token (the apply and label threads send up to 64 at once) are both
    answered 401 once it expired. Only the one whose own re-read found the file changed was sent again: the other's
    401 went up as an ApiError, though the new token was at hand. A request is sent again when the token held now is
    not the one it was sent with."""
    from gpu_operator.kube import ApiError

    token = tmp_path / "token"
    token.write_text("old")
    valid = ["Bearer old"]
    both_in = threading.Barrier(2, timeout=10)
    srv = server(lambda method, path, n: (200, {}, POD) if srv.auth[n - 1] in valid else (401, {}, b""),
                 user={"tokenFile": "token"})  # fmt: skip

    def hold_first_two() -> None:  # both first requests reach the server before either is answered
        if len(srv.sent) <= 2:
            both_in.wait()

    srv.on_request = hold_first_two
    token.write_text("new")  # rotated; the old token expires (no minute passed: not read again before sending)
    valid[:] = ["Bearer new"]
    errors: list[BaseException] = []

    def get() -> None:
        try:
            srv.kube.request("GET", "/api/v1/namespaces/gpu-operator/pods/p")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert srv.auth[:2] == ["Bearer old", "Bearer old"]
    refused = [e for e in errors if isinstance(e, ApiError)]
    assert not refused, f"a request answered 401 was not sent again with the new token: {refused}"
