"""Prometheus metrics (prefix gpu_operator_), names as upstream's, and the endpoints serving them and /healthz."""

from __future__ import annotations

import errno
import socket
import threading
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from aiohttp import web

REGISTRY = CollectorRegistry()


def _g(name: str, doc: str) -> Gauge:
    return Gauge(f"gpu_operator_{name}", doc, registry=REGISTRY)


gpu_nodes_total = _g("gpu_nodes_total", "Number of nodes with GPUs")
reconciliation_status = _g(
    "reconciliation_status", "1 ready, 0 not ready, -1 no ClusterPolicy, -2 reconciliation error"
)
reconciliation_total = Counter("gpu_operator_reconciliation", "Reconciliations of the ClusterPolicy", registry=REGISTRY)
# Ours: the CPU the passes' own thread spent (the process's CPU less this is the watches' and the event loop's).
reconciliation_cpu_seconds_total = Counter(
    "gpu_operator_reconciliation_cpu_seconds", "CPU time spent in reconcile passes (their thread)", registry=REGISTRY
)
# Ours: what the passes were started by (a pass started by changes of several kinds counts once for each).
reconciliation_triggers_total = Counter(
    "gpu_operator_reconciliation_triggers",
    "Reconcile passes by the kind of change that started them (timer: none, a periodic recheck)",
    ["source"],
    registry=REGISTRY,
)
reconciliation_failed_total = Counter(
    "gpu_operator_reconciliation_failed", "Failed reconciliations of the ClusterPolicy", registry=REGISTRY
)
reconciliation_last_success_ts_seconds = _g(
    "reconciliation_last_success_ts_seconds", "Time of the last successful reconciliation"
)
reconciliation_has_nfd_labels = _g("reconciliation_has_nfd_labels", "1 when some node has NFD labels")
driver_auto_upgrade_enabled = _g(
    "driver_auto_upgrade_enabled", "1 when driver upgrades are orchestrated (autoUpgrade on, not with sandboxWorkloads)"
)
nodes_upgrades_in_progress = _g("nodes_upgrades_in_progress", "Nodes whose driver upgrade is in progress")
nodes_upgrades_done = _g("nodes_upgrades_done", "Nodes whose driver is up to date")
nodes_upgrades_failed = _g("nodes_upgrades_failed", "Nodes whose driver upgrade failed")
nodes_upgrades_available = _g("nodes_upgrades_available", "Upgrade slots free now")
nodes_upgrades_pending = _g("nodes_upgrades_pending", "Nodes waiting for an upgrade slot")
leader = _g("leader", "1 while this replica holds the leader Lease (or runs without leader election), else 0")


class _DualStack(ThreadingWSGIServer):
    """Listens on "::" for IPv6 and IPv4 alike (as Go's ":8080" does), whatever net.ipv6.bindv6only says."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(port: int) -> None:
    """/metrics on every address family (IPv4 only where the pod has no IPv6), in a thread of its own."""
    if not port:
        return
    try:
        server = make_server("::", port, make_wsgi_app(REGISTRY), _DualStack, handler_class=_Quiet)
    except OSError:  # IPv6 is off in this pod
        start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
        return
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


def bind_health(port: int) -> list[socket.socket]:
    """The /healthz sockets, listening now (so a port in use stops `run` before it acts), on every address family:
    0.0.0.0 and [::] (IPv6 only) each, as asyncio binds host None, leaving out a family the pod lacks."""
    bound: list[socket.socket] = []
    try:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:  # the family is off in this pod
                continue
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:  # that: the family has no address here
                    raise
                bound.pop().close()
                continue
            sock.listen(128)
            sock.setblocking(False)
        if not bound:
            raise OSError(errno.EADDRNOTAVAIL, "no IPv4 or IPv6 address to listen on")
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


async def serve_health(sockets: list[socket.socket]) -> web.AppRunner:
    """/healthz for the probes on the sockets of bind_health, from the event loop as kopf's liveness endpoint is (a
    stuck loop fails them), but on every address family: kopf binds the one host its URL names, and 0.0.0.0 is
    IPv4 only while asyncio makes [::] IPv6 only. Its runner's cleanup() stops it."""
    from aiohttp import web  # kopf's HTTP server, imported only by `run`

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({})  # what kopf's endpoint answers with no probe handlers

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    return runner
