"""The operator's client resumes TLS sessions on new connections (gpu_operator.tls), against the real API server:
the server still knows who is asking (a token, a client certificate), and a server the CA does not vouch for is
still refused."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.localcluster import LocalCluster
from gpu_operator import tls
from gpu_operator.kube import Kube, Unreachable


def _connections(kube: Kube) -> list[Any]:
    manager = kube.client.rest_client.pool_manager
    pools: list[Any] = [manager.pools[key] for key in manager.pools.keys()]
    return [c for pool in pools for c in list(pool.pool.queue) if c is not None and c.sock is not None]


def _who(kube: Kube) -> str:
    review = kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})  # fmt: skip
    return str(review["status"]["userInfo"]["username"])


def _after_a_quiet_spell(kube: Kube) -> tuple[str, bool]:
    """The client asks once, loses its connections (as the server closes idle ones), asks again on a new one:
    who the server says it is then, and whether that connection resumed the first one's session."""
    _who(kube)
    kube.client.rest_client.pool_manager.clear()
    who = _who(kube)
    [conn] = _connections(kube)
    assert isinstance(conn.sock, ssl.SSLSocket)
    return who, bool(conn.sock.session_reused)


def _admin_but(cluster: LocalCluster, path: Path, user: dict[str, str] | None = None,
               ca_pem: bytes | None = None) -> str:
    """The cluster's admin kubeconfig with another user's credentials or another CA, written to `path`."""
    doc = json.loads(cluster.kubeconfig.read_text())
    if user is not None:
        doc["users"][0]["user"] = user
    if ca_pem is not None:
        doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_new_connection_resumes_the_last_session_as_the_same_identity(cluster: LocalCluster) -> None:
    kube = Kube.connect(str(cluster.operator_kubeconfig))
    who, resumed = _after_a_quiet_spell(kube)
    assert resumed
    assert who == "system:serviceaccount:gpu-operator:gpu-operator"
    plain = Kube.connect(str(cluster.operator_kubeconfig), resume_tls=False)
    who, resumed = _after_a_quiet_spell(plain)
    assert not resumed and who == "system:serviceaccount:gpu-operator:gpu-operator"


def test_a_client_certificate_still_names_the_user_on_a_resumed_session(cluster: LocalCluster, tmp_path: Path) -> None:
    pki = cluster.state_dir / "pki"
    if not (pki / "ca.key").exists():
        pytest.skip("needs the local cluster's CA key to sign a client certificate (not in existing-cluster mode)")
    for args in (
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "user.key", "-out", "user.csr", "-subj", "/CN=tls-user"],
        ["x509", "-req", "-in", "user.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-CAcreateserial", "-days", "1", "-out", "user.crt"],
    ):  # fmt: skip
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    user = {"client-certificate-data": base64.b64encode((tmp_path / "user.crt").read_bytes()).decode(),
            "client-key-data": base64.b64encode((tmp_path / "user.key").read_bytes()).decode()}  # fmt: skip
    config = _admin_but(cluster, tmp_path / "cert.kubeconfig", user=user)
    who, resumed = _after_a_quiet_spell(Kube.connect(config))
    assert resumed and who == "tls-user"


def test_a_server_the_ca_does_not_vouch_for_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    make_ca = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "other.key",
               "-out", "other.crt", "-subj", "/CN=another-ca"]  # fmt: skip
    subprocess.run(make_ca, cwd=tmp_path, check=True, capture_output=True)
    config = _admin_but(cluster, tmp_path / "other.kubeconfig", ca_pem=(tmp_path / "other.crt").read_bytes())
    kube = Kube.connect(config)
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        kube.request("GET", "/version", timeout=5)


def _serve(context: ssl.SSLContext) -> tuple[int, threading.Thread]:
    """A loopback TLS server answering each connection with one line (its session tickets go before it)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener:
            for _ in range(2):  # the test's two connections to each
                conn, _addr = listener.accept()
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello\n")
                    tls_conn.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """Two TLS servers with one certificate but their own ticket keys (as an API server before and after a
    restart): the CA's path and their ports."""
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "ca.key", "-out", "ca.crt",
         "-subj", "/CN=test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=srv"],
        ["x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
         "-extfile", "san.ext", "-out", "srv.crt"],
    ):  # fmt: skip
        (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    ports, threads = [], []
    for _ in range(2):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
        port, thread = _serve(server)
        ports.append(port)
        threads.append(thread)
    yield tmp_path / "ca.crt", ports
    for thread in threads:
        thread.join(timeout=5)


def test_a_ticket_the_server_no_longer_takes_is_replaced_by_the_next_full_handshakes(
    two_servers: tuple[Path, list[int]],
) -> None:
    ca, (first, second) = two_servers
    cfg = client.Configuration()
    cfg.ssl_ca_cert = str(ca)
    context = tls.context_for(cfg)

    def connect(port: int) -> bool:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
            s.recv(16)  # the tickets come before the line
            context.keep(s)
            s.sendall(b"x")
            return bool(s.session_reused)

    assert not connect(first) and context.session is not None
    kept = context.session
    assert connect(first) and context.session is kept  # resumed: the ticket offered is kept
    assert not connect(second)  # another server's keys: a full handshake, whose ticket replaces the old one
    assert context.session is not kept
    assert connect(second)
