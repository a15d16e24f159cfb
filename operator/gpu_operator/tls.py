"""TLS session resumption for the API client's connection pool.

The client speaks HTTP/1.1: requests in flight together each need a connection, and the API server closes one
idle for 90 s. So a burst after a quiet spell (nodes joining together, each labelled from its own thread) opens
dozens of TLS connections at once, each a full handshake (the server's signature, the client's chain check).
Here every connection of the client (all its pools) shares one context, and offers the ticket of the last full
handshake one of them made: the server resumes it with a cheaper handshake (TLS 1.3, ephemeral keys still
exchanged). A ticket the server no longer takes (restarted, keys rotated, expired) costs what resumption saves,
no more: it answers with a full handshake, whose ticket is offered from then on.

The context is set up once, before any connection: urllib3 would otherwise load the CA and client certificate
into it for every connection, while other threads handshake from it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.util.ssl_ import ALPN_PROTOCOLS


class ResumingContext(ssl.SSLContext):
    """A client context whose new connections offer the ticket of the last full handshake one of them made."""

    session: ssl.SSLSession | None = None
    _alpn: list[str] | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        if session is not None and kwargs.get("session") is None:
            kwargs["session"] = session
        return super().wrap_socket(sock, *args, **kwargs)

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        """urllib3 sets the same protocols before every connection: set once, as replacing them is not safe
        while another thread makes a connection from this context."""
        protocols = list(alpn_protocols)
        if protocols != self._alpn:
            super().set_alpn_protocols(protocols)
            self._alpn = protocols

    def keep(self, sock: Any) -> None:
        """Called by the thread that owns `sock` between its requests (no read in flight on it). The ticket of a
        full handshake is kept; a resumed connection's new one is not (the one offered still works, and taking
        each new one grew the process by ~5 KB a connection, measured over 2,000)."""
        if isinstance(sock, ssl.SSLSocket) and not sock.session_reused:
            session = sock.session
            if session is not None and session.has_ticket:
                self.session = session


class _Connection(HTTPSConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        response = super().getresponse(*args, **kwargs)
        # The server sends its ticket right after the handshake: reading the answer's head took it in.
        if isinstance(self.ssl_context, ResumingContext):
            self.ssl_context.keep(self.sock)
        return response


class _Pool(HTTPSConnectionPool):
    ConnectionCls = _Connection


@contextmanager
def _loading(what: str) -> Iterator[None]:
    """OpenSSL's error for a file that is not PEM names no file: this one names what was loaded."""
    try:
        yield
    except ssl.SSLError as exc:
        raise ssl.SSLError(exc.errno, f"{what}: {exc}") from exc


def context_for(configuration: Any) -> ResumingContext:
    """A context as urllib3 would make for the kubernetes client's configuration, with its CA and client
    certificate loaded."""
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET  # as urllib3: TLS 1.2 without tickets
    context.post_handshake_auth = True
    context.hostname_checks_common_name = False
    if configuration.verify_ssl:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = configuration.assert_hostname is None
        if configuration.ssl_ca_cert or configuration.ca_cert_data:
            with _loading("CA certificate"):
                context.load_verify_locations(cafile=configuration.ssl_ca_cert, cadata=configuration.ca_cert_data)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        with _loading("client certificate or key"):
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def resume_sessions(pool_manager: Any, configuration: Any) -> bool:
    """Have a kubernetes client's direct (no proxy) pool manager resume TLS sessions; whether it does."""
    if type(pool_manager) is not urllib3.PoolManager:
        return False
    pool_manager.connection_pool_kw.update(
        ssl_context=context_for(configuration), ca_certs=None, ca_cert_data=None, cert_file=None, key_file=None
    )
    pool_manager.pool_classes_by_scheme = {**pool_manager.pool_classes_by_scheme, "https": _Pool}
    return True
