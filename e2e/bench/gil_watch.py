"""How fast the operator's watch reads events while another thread computes (prints numbers, asserts nothing).

    python -m e2e.bench.gil_watch [--events 5000] [--size 4000] [--runs 3]

A loopback TLS server (a self-signed certificate made with openssl, as the local cluster's are) answers one
watch with `--events` events of about `--size` bytes, each written as its own TLS record, as the API server
writes them. `Kube.watch`, the operator's own reader, reads them all: alone, and beside a thread running Python
code (a reconcile pass), at Python's default GIL switch interval and at the operator's (debug.SWITCH_INTERVAL_S).
Each figure is the median of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from gpu_operator.debug import SWITCH_INTERVAL_S
from gpu_operator.kube import Kube

DEFAULT_INTERVAL_S = 0.005  # CPython's


def _serve(sock: ssl.SSLSocket, events: int, size: int) -> None:
    line = json.dumps({"type": "MODIFIED", "object": {"metadata": {"name": "p", "resourceVersion": "1"},
                                                      "pad": "x" * size}}).encode() + b"\n"  # fmt: skip
    chunk = b"%x\r\n" % len(line) + line + b"\r\n"
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(events):
                conn.sendall(chunk)
            conn.sendall(b"0\r\n\r\n")


def _spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i


def _read(kube: Kube) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(1 for _ in kube.watch("/api/v1/pods", "1", timeout_seconds=60))
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4000, help="bytes of padding in each event")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "k.pem",
                        "-out", "c.pem", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       cwd=d, check=True, capture_output=True)  # fmt: skip
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "c.pem", d / "k.pem")
        raw = socket.create_server(("127.0.0.1", 0))
        server = ctx.wrap_socket(raw, server_side=True)
        port = server.getsockname()[1]
        threading.Thread(target=_serve, args=(server, args.events, args.size), daemon=True).start()
        kubeconfig = d / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                       "certificate-authority": str(d / "c.pem")}}],
            "users": [{"name": "bench", "user": {"token": "bench"}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
        }))  # fmt: skip
        kube = Kube.connect(str(kubeconfig))
        rows = []
        for label, busy, interval in [("alone", False, DEFAULT_INTERVAL_S),
                                      ("beside a busy thread, 5 ms switch interval (Python's)", True,
                                       DEFAULT_INTERVAL_S),
                                      (f"beside a busy thread, {SWITCH_INTERVAL_S * 1000:g} ms (the operator's)", True,
                                       SWITCH_INTERVAL_S)]:  # fmt: skip
            rates = []
            for _ in range(args.runs):
                sys.setswitchinterval(interval)
                stop = threading.Event()
                spinner = threading.Thread(target=_spin, args=(stop,), daemon=True)
                if busy:
                    spinner.start()
                try:
                    n, took = _read(kube)
                finally:
                    stop.set()
                    if busy:
                        spinner.join()
                    sys.setswitchinterval(DEFAULT_INTERVAL_S)
                assert n == args.events, f"read {n} of {args.events} events"
                rates.append(n / took)
            rows.append((label, statistics.median(rates)))
        server.close()
    alone = rows[0][1]
    print(f"watch events read per second ({args.events} events of ~{args.size} bytes, medians of {args.runs})")
    print("| reader | events/s | of alone |")
    print("|---|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} | {rate / alone:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
