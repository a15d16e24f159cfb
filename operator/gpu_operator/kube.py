"""A thin, synchronous Kubernetes REST adapter over the official client's auth and connection pool.

Only what the operator needs: get/list/apply (server-side, one field manager)/merge-patch/delete/create.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, Self
from urllib.parse import quote, urlencode

import urllib3
import yaml
from kubernetes import client, config

from . import tls
from .kinds import lookup, registry

FIELD_MANAGER = "gpu-operator"

log = logging.getLogger("gpu_operator")


class ApiError(client.ApiException):
    """An API server error: `status`, the server's `message`, and what was asked (also a client ApiException, so
    code written against the kubernetes client's errors catches it too)."""

    def __init__(self, status: int, body: str, what: str, reason: str = ""):
        super().__init__(status=status, reason=reason, body=body)
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):  # not a Status: a proxy's error page, say
            message = _first_line(body).removeprefix(f"{status} ") or reason
        self.message = message
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.status} {self.message}"


class Unreachable(OSError):
    """The cluster could not be reached: a kubeconfig that cannot be used, or an API server that does not answer
    (refused, TLS, timeout). An OSError, as a socket's would be: the commands report it in one line, and the
    operator's loops, which catch every exception, retry it as before."""


def _first_line(body: str) -> str:
    """A body that is not JSON in one line: an HTML page's <title>, else its first non-blank line."""
    title = re.search(r"<title[^>]*>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
    line = title.group(1) if title else next((ln for ln in body.splitlines() if ln.strip()), "")
    return " ".join(line.split())[:200]


def _not_json(what: str, resp: Any) -> Unreachable | None:
    """For an answer in the 2xx whose body could not be decoded: one line naming what was asked and the answer's
    Content-Type when that is not JSON (a sign-in page, a web UI: not an API server); None when it is JSON, which
    the decoder refused: its own error stands."""
    ctype = resp.getheader("Content-Type") or "no Content-Type"
    if "json" in ctype:
        return None
    return Unreachable(f"{what}: answered {resp.status} {ctype}, not JSON: is this a Kubernetes API server?")


def _reason(exc: BaseException) -> str:
    """urllib3's message without its retry wrapper or the connection object's repr."""
    reason = getattr(exc, "reason", None) or exc
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>: ", "", " ".join(str(reason).split()))


class NotLeader(RuntimeError):
    """A write refused because this replica does not (or no longer surely) hold the leader Lease."""


class Fence:
    """Lets writes through only until a deadline (the leader's renew deadline), checked before each one is sent.

    The leader election extends it on every renew and closes it, for good, when leadership ends (the process then
    exits); `drain` waits for the writes already sent, so the Lease is released only after the last of them is
    answered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.until = float("-inf")
        self.closed = False
        self._inflight = 0
        self._cond = threading.Condition()

    def extend(self, until: float) -> None:
        with self._cond:
            if not self.closed:  # a renew that lands after close() does not open it again
                self.until = max(self.until, until)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self.until = float("-inf")

    def is_open(self) -> bool:
        return self.clock() < self.until

    @contextmanager
    def write(self, what: str) -> Iterator[None]:
        with self._cond:
            if not self.is_open():
                raise NotLeader(f"{what}: not the leader")
            self._inflight += 1
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no write is in flight; whether none is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)


def _default_kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def _current_user(kubeconfig: str | None) -> tuple[Any, Any, Any]:
    """(the merged kubeconfig, its current context, that context's user entry or None), read as the client reads
    them (its KubeConfigMerger); raises what the client's reading raises."""
    kc = config.kube_config
    merged = kc.KubeConfigMerger(kubeconfig or kc.KUBE_CONFIG_DEFAULT_LOCATION).config
    context = merged["contexts"].get_with_name(merged["current-context"])["context"]
    return merged, context, merged["users"].get_with_name(context.safe_get("user"), safe=True)


_UNREADABLE = (config.ConfigException, yaml.YAMLError, OSError, KeyError, TypeError, AttributeError, ValueError)


def _exec_plugin(kubeconfig: str | None) -> tuple[str, bool] | None:
    """(the command of the current user's exec credential plugin, whether it is installed), or None when the client
    would run none. A plugin not installed the client only logs (on the root logger) and goes on without
    credentials; a kubeconfig it cannot read is left to it."""
    try:
        merged, context, user = _current_user(kubeconfig)
        fields = user.safe_get("user") if user is not None else None
        if not isinstance(fields, dict) or any(k in fields for k in ("auth-provider", "token", "tokenFile")):
            return None  # no user, or a credential the client takes before the plugin's
        command = (fields.get("exec") or {}).get("command")
        if not isinstance(command, str):
            return None
        env = {e.get("name"): e.get("value") for e in fields["exec"].get("env") or []}
        cluster = merged["clusters"].get_with_name(context["cluster"])
    except _UNREADABLE:
        return None
    if os.sep in command:  # the client runs it in the directory of the kubeconfig naming the cluster
        found = os.access(os.path.join(os.path.dirname(os.path.abspath(cluster.path)), command), os.X_OK)
    else:
        found = shutil.which(command, path=env.get("PATH")) is not None
    return command, found


class _ExecPluginErrors(logging.Handler):
    """What the kubernetes client's kubeconfig loader says of a failing exec credential plugin (exit status and
    stderr, output that is not an ExecCredential) while this thread loads a kubeconfig: it only logs that, on the
    root logger, and goes on without credentials."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.funcName == "_load_from_exec_plugin":
            self.messages.append(record.getMessage())


def path_for(kind: str, name: str | None = None, namespace: str | None = None, sub: str | None = None) -> str:
    k = lookup(kind)
    path = "/" + k.prefix
    if k.namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{k.plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def _resource_of(path: str) -> str:
    """/api/v1/namespaces/ns/pods/p/eviction -> pods/eviction; /apis/apps/v1/daemonsets -> daemonsets."""
    parts = path.strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
        parts = parts[2:]
    return "/".join(parts[::2]) if parts else ""


RETRIES = 10  # a request the API server asks to send again is sent at most this many more times (as client-go)
MAX_RETRY_AFTER_S = 10.0


def _retry_in(resp: Any) -> float | None:
    """Seconds to wait before sending a request again, or None when it should not be: a 429 (API Priority and
    Fairness turning the request away) or a 5xx with Retry-After, after the wait it names (a 429 without one: 1 s),
    capped at MAX_RETRY_AFTER_S, plus up to a tenth more so that clients turned away together do not come back
    together."""
    header = resp.getheader("Retry-After")
    if resp.status != 429 and not (resp.status >= 500 and header):
        return None
    try:
        seconds = float(header) if header else 1.0
    except ValueError:  # an HTTP date: the API server sends seconds
        seconds = 1.0
    seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return seconds * (1 + random.random() / 10)


CONNECT_RETRIES = 3
_sending = threading.local()  # `fenced`: this thread is sending a fenced write (Kube.request)


class _NotConnected(urllib3.exceptions.HTTPError):
    """A fenced write's connection could not be made: nothing was sent. Kube.request tries again after checking the
    fence, not the pool."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.reason = error


class _SendAgainOnlyUnsent(urllib3.Retry):
    """The pool's retries, but a fenced write's connection is never tried again here (see _NotConnected)."""

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Self:  # fmt: skip
        if error is not None and getattr(_sending, "fenced", False) and self._is_connection_error(error):
            raise _NotConnected(error)
        return super().increment(method, url, response, error, _pool, _stacktrace)


# The kubernetes client's urllib3 pool sends a request again only when no connection was made. By default it also
# sent a GET/PUT/DELETE again after a read error or a 429/503 with Retry-After, within Kube.request's one pass of
# the fence and past its caps: a request the API server answered is sent again by Kube.request and Kube.watch only.
SEND_AGAIN_ONLY_UNSENT = _SendAgainOnlyUnsent(CONNECT_RETRIES, read=False, other=0, respect_retry_after_header=False)

TOKEN_FILE_TTL_S = 60.0  # a bearer token from a file is read again once this old (client-go's cached file token)


class TokenFile:
    """A bearer token from a file that is rotated under the operator: the in-cluster ServiceAccount token (projected,
    the kubelet writes a new one before the old expires) or a kubeconfig user's tokenFile. The kubernetes client
    reads a tokenFile once, and the in-cluster file again only when a minute old, never at once after a 401. Here it
    is the configuration's API key, read again when older than TOKEN_FILE_TTL_S (the configuration asks before
    every request) and at once by `reread` (after a 401). A read that fails or finds the file empty keeps the token
    read before, as client-go does."""

    def __init__(self, path: str, configuration: client.Configuration, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.configuration = configuration
        self.clock = clock
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self.reread()
        configuration.refresh_api_key_hook = lambda _cfg: self.fresh()  # type: ignore[assignment]

    def fresh(self) -> None:
        if self.clock() - self._read_at >= TOKEN_FILE_TTL_S:
            self.reread()

    def reread(self) -> bool:
        """Read the file now; whether the token changed."""
        with self._lock:
            self._read_at = self.clock()
            try:
                with open(self.path) as f:
                    token = f.read().strip()
            except OSError as exc:
                log.warning("token file %s: %s; the token read before is kept", self.path, _reason(exc))
                return False
            if not token:
                log.warning("token file %s is empty; the token read before is kept", self.path)
                return False
            header = f"Bearer {token}"
            changed = self.configuration.api_key.get("BearerToken") != header
            self.configuration.api_key["BearerToken"] = header
            return changed


def _kubeconfig_token_file(kubeconfig: str | None, loaded: str | None) -> str | None:
    """The tokenFile (relative to the kubeconfig naming it) of the current user of a kubeconfig the client loaded,
    when the client's token (`loaded`) is that file's; else None (a token inline, from an auth provider or an exec
    plugin, or none)."""
    try:
        _, _, user = _current_user(kubeconfig)
        fields = user.safe_get("user") if user is not None else None
        if not isinstance(fields, dict) or not isinstance(fields.get("tokenFile"), str):
            return None
        path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(user.path)), fields["tokenFile"]))
        with open(path) as f:
            return path if loaded == f"Bearer {f.read()}" else None
    except _UNREADABLE:
        return None


def page_continue(page: dict[str, Any]) -> str | None:
    """A parsed list page's continue token."""
    return (page.get("metadata") or {}).get("continue")


def list_pages(
    request: Callable[..., Any],
    path: str,
    query: dict[str, Any],
    limit: int,
    decode: Callable[[bytes], Any] = json.loads,
    continue_of: Callable[[Any], str | None] = page_continue,
) -> Iterator[tuple[bool, Any]]:
    """A collection's list pages, each with whether the listing was started again: when the API server no longer
    takes a page's continue token (410 Expired: etcd compacted past the first page's version), the whole collection
    is listed again in one request (as client-go's pager does). `request`: Kube.request's; `decode`: each page's
    decoder; `continue_of`: a decoded page's continue token, read once the caller has taken the page."""
    cont = None
    while True:
        try:
            page = request("GET", path, query={**query, "limit": limit, **({"continue": cont} if cont else {})},
                           decode=decode)  # fmt: skip
        except ApiError as exc:
            if exc.status != 410 or cont is None:
                raise
            log.info("GET %s: %s; listing it again whole", path, exc.message)
            yield True, request("GET", path, query=query, decode=decode)
            return
        yield False, page
        cont = continue_of(page)
        if not cont:
            return


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.client = api_client
        self.host = api_client.configuration.host.rstrip("/")
        # Requests made, by (verb, resource), for logs, metrics and benchmarks.
        self.requests: Counter[tuple[str, str]] = Counter()
        self._count_lock = threading.Lock()
        self.user_agent: str | None = None  # sent on every request (tells replicas apart in the audit log)
        self.fence: Fence | None = None  # when set, every write must pass it (leader election)
        self.token_file: TokenFile | None = None  # where the bearer token comes from, when from a file

    def writes(self) -> int:
        """Requests that changed something (every verb but GET and WATCH) so far."""
        return sum(n for (verb, _), n in self.requests.items() if verb not in ("GET", "WATCH"))

    @classmethod
    def connect(cls, kubeconfig: str | None = None, resume_tls: bool = True) -> Kube:
        """A client from a kubeconfig, the in-cluster config, or the default kubeconfig. `resume_tls`: new
        connections resume the last TLS session (tls.py); without, each is a full handshake."""
        cfg = client.Configuration()
        in_cluster = not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
        where = "the in-cluster config" if in_cluster else f"kubeconfig {kubeconfig or _default_kubeconfig()}"
        plugin = None if in_cluster else _exec_plugin(kubeconfig)
        if plugin is not None and not plugin[1]:
            raise Unreachable(f"{where}: exec credential plugin {plugin[0]!r} not found (kubectl would need it too)")
        plugin_errors = _ExecPluginErrors()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=cfg)
                token_path: str | None = config.incluster_config.SERVICE_TOKEN_FILENAME
            else:
                logging.getLogger().addHandler(plugin_errors)
                try:
                    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
                finally:
                    logging.getLogger().removeHandler(plugin_errors)
                token_path = _kubeconfig_token_file(kubeconfig, cfg.api_key.get("BearerToken"))
        except (config.ConfigException, yaml.YAMLError, TypeError, AttributeError, KeyError, ValueError) as exc:
            why = " ".join(str(exc).split())
            if not isinstance(exc, config.ConfigException | yaml.YAMLError):  # the loader's reading of a YAML list
                why = f"not a kubeconfig ({type(exc).__name__}: {why})"
            raise Unreachable(f"{where}: {why}") from exc
        except OSError as exc:  # a file it names that cannot be read (a tokenFile that is gone): kubectl stops too
            raise Unreachable(f"{where}: {' '.join(str(exc).split())}") from exc
        if plugin_errors.messages:
            command = plugin[0] if plugin is not None else "?"
            why = _first_line(plugin_errors.messages[0]).removeprefix("exec: ")
            raise Unreachable(f"{where}: exec credential plugin {command!r} failed: {why}")
        cfg.connection_pool_maxsize = 64  # the apply (16) and single-node label (48) threads
        cfg.retries = SEND_AGAIN_ONLY_UNSENT
        token_file = TokenFile(token_path, cfg) if token_path else None
        api_client = client.ApiClient(cfg)
        if resume_tls:
            try:
                tls.resume_sessions(api_client.rest_client.pool_manager, cfg)
            except ssl.SSLError as exc:  # a CA or client certificate (or key) that is not PEM: kubectl stops too
                raise Unreachable(f"{where}: {' '.join(str(exc).split())}") from exc
        kube = cls(api_client)
        kube.token_file = token_file
        return kube

    def _token_rotated(self, status: int, sent: Mapping[str, str]) -> bool:
        """After a 401, whether the token file holds another token than the one the request was sent with (`sent`:
        its headers): the file read now, or by another request meanwhile (many are in flight at a rotation). The
        request is then sent again once."""
        if status != 401 or self.token_file is None:
            return False
        changed = self.token_file.reread()
        return changed or self.client.configuration.api_key.get("BearerToken") != sent.get("authorization")

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.user_agent:
            headers["User-Agent"] = self.user_agent
        if content_type:
            headers["Content-Type"] = content_type
        for auth in self.client.configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        q = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None}
        return self.host + path + ("?" + urlencode(q) if q else "")

    def _count(self, method: str, path: str) -> None:
        with self._count_lock:
            self.requests[(method, _resource_of(path))] += 1

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str | None = None,
        timeout: float = 30,
        decode: Callable[[bytes], Any] = json.loads,
        retry: bool = True,
    ) -> Any:
        """One request with plain JSON in and out (no client models in between); ApiError on a 4xx/5xx.

        `decode`: the answer's body to what is returned (wire.py's typed decoders read only some fields).
        `retry`: a 429, or a 5xx with Retry-After, is sent again after the wait it names (see `_retry_in`), up to
        RETRIES times while the waits add up to no more than `timeout`. A 401 is sent again once, at once, when the
        token file (if the token is from one) holds a new token. A fenced write's connection must be made before the
        fence closes, and is tried again (up to CONNECT_RETRIES times) only after the fence is checked again."""
        if body is not None and content_type is None:
            content_type = "application/json"
        if isinstance(body, dict | list) and content_type and content_type.endswith("yaml"):
            body = json.dumps(body)  # apply-patch bodies go as JSON text (JSON is YAML)
        waited = 0.0
        reauthed = False
        attempt = 0
        connects = 0
        fence = self.fence if method != "GET" else None
        while True:
            if not connects:
                self._count(method, path)
            with fence.write(f"{method} {path}") if fence is not None else nullcontext():
                headers = self._headers(content_type)
                request_timeout: float | tuple[float, float] = timeout
                if fence is not None:  # connected before the fence closes, or not sent
                    request_timeout = (max(0.001, min(timeout, fence.until - fence.clock())), timeout)
                _sending.fenced = fence is not None
                try:
                    resp = self.client.rest_client.request(
                        method, self._url(path, query), headers=headers, body=body, _request_timeout=request_timeout,
                    )  # fmt: skip
                    data = resp.read()
                except _NotConnected as exc:
                    if connects < CONNECT_RETRIES:
                        connects += 1
                        continue
                    raise Unreachable(f"{method} {self.host}{path}: {_reason(exc)}") from exc
                except urllib3.exceptions.HTTPError as exc:
                    raise Unreachable(f"{method} {self.host}{path}: {_reason(exc)}") from exc
                except client.ApiException as exc:  # the client's wrapping of a TLS error (status 0)
                    raise Unreachable(f"{method} {self.host}{path}: {' '.join(str(exc.reason).split())}") from exc
                finally:
                    _sending.fenced = False
            connects = 0
            if 200 <= resp.status <= 299:
                try:
                    return decode(data) if data else None
                except ValueError as exc:
                    if (unreachable := _not_json(f"{method} {self.host}{path}", resp)) is None:
                        raise
                    raise unreachable from exc
            if not reauthed and self._token_rotated(resp.status, headers):
                reauthed = True
                log.info("%s %s: 401, sent again with the token file's new token", method, path)
                continue
            wait = _retry_in(resp) if retry and attempt < RETRIES else None
            if wait is None or waited + wait > timeout:
                break
            log.info("%s %s: %d %s, sent again in %.1fs", method, path, resp.status, resp.reason or "", wait)
            time.sleep(wait)
            waited += wait
            attempt += 1
        raise ApiError(resp.status, data.decode(errors="replace"), f"{method} {path}", resp.reason or "")

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_seconds: int = 30,
        *,
        handle: list[Any] | None = None,
        parse: Callable[[bytes], Any] = json.loads,
        **query: Any,
    ) -> Iterator[Any]:
        """Watch events ({"type", "object"}) from a collection path until the server ends the watch.

        While the watch is open its urllib3 response is in `handle` (if given), so another thread can end a
        blocked read with `response.shutdown()`. `parse`: an event line to the event, or None to skip it.
        """
        q = {"watch": True, "resourceVersion": resource_version, "timeoutSeconds": timeout_seconds,
             "allowWatchBookmarks": True, **query}  # fmt: skip
        reauthed = False
        attempt = 0
        while True:  # a watch turned away is sent again as a request is
            self._count("WATCH", path)
            headers = self._headers(None)
            resp = self.client.rest_client.pool_manager.request(
                "GET", self._url(path, q), headers=headers, preload_content=False, timeout=timeout_seconds + 10,
            )  # fmt: skip
            if not reauthed and self._token_rotated(resp.status, headers):
                reauthed = True
                resp.drain_conn()
                resp.release_conn()
                log.info("WATCH %s: 401, sent again with the token file's new token", path)
                continue
            wait = _retry_in(resp) if attempt < RETRIES else None
            if wait is None:
                break
            resp.drain_conn()
            resp.release_conn()
            log.info("WATCH %s: %d %s, sent again in %.1fs", path, resp.status, resp.reason or "", wait)
            time.sleep(wait)
            attempt += 1
        if handle is not None:
            handle.append(resp)
        try:
            if resp.status != 200:
                raise ApiError(resp.status, resp.read().decode(errors="replace"), f"WATCH {path}", resp.reason or "")
            buf = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                lines = (buf + chunk).split(b"\n")  # one split a chunk: no copy of the rest per line
                buf = lines.pop()
                for line in lines:
                    if line.strip():
                        try:
                            event = parse(line)
                        except ValueError as exc:
                            if (unreachable := _not_json(f"WATCH {self.host}{path}", resp)) is None:
                                raise
                            raise unreachable from exc
                        if event is not None:
                            yield event
        finally:
            if handle is not None and resp in handle:
                handle.remove(resp)
            resp.release_conn()

    # Convenience verbs

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", path_for(kind, name, namespace))
            return result
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        items: list[dict[str, Any]] = []
        for again, page in self._pages(path_for(kind, namespace=namespace), query, 500):
            if again:
                items = []
            items += page.get("items") or []
        return items

    def each(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None, limit: int = 500
    ) -> Iterator[dict[str, Any]]:
        """The objects of a kind one by one, a page at a time: a caller that keeps only a projection of each never
        holds more than one page of whole objects. A listing started again (`_pages`) yields only the objects not
        yielded before."""
        query: dict[str, Any] = {"labelSelector": label_selector} if label_selector else {}
        yielded: set[tuple[str, str]] = set()
        for again, page in self._pages(path_for(kind, namespace=namespace), query, limit):
            items = page.pop("items", None) or []
            for i in range(len(items)):
                obj, items[i] = items[i], None
                meta = obj.get("metadata") or {}
                key = (meta.get("namespace") or "", meta.get("name") or "")
                if again and key in yielded:
                    continue
                yielded.add(key)
                yield obj

    def _pages(self, path: str, query: dict[str, Any], limit: int) -> Iterator[tuple[bool, dict[str, Any]]]:
        """A collection's list pages (list_pages)."""
        return list_pages(self.request, path, query, limit)

    def apply(self, obj: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        """Server-side apply under the operator's field manager."""
        meta = obj["metadata"]
        path = path_for(obj["kind"], meta["name"], meta.get("namespace"), sub)
        result: dict[str, Any] = self.request(
            "PATCH",
            path,
            json.dumps(obj),
            {"fieldManager": FIELD_MANAGER, "force": "true"},
            "application/apply-patch+yaml",
        )
        return result

    def merge_patch(
        self,
        kind: str,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PATCH",
            path_for(kind, name, namespace, sub),
            patch,
            {"fieldManager": FIELD_MANAGER},
            "application/merge-patch+json",
            retry=retry,
        )
        return result

    def create(self, obj: dict[str, Any], sub: str | None = None, retry: bool = True) -> dict[str, Any]:
        meta = obj["metadata"]
        if sub:
            path = path_for(obj["kind"], meta["name"], meta.get("namespace"), sub)
        else:
            path = path_for(obj["kind"], namespace=meta.get("namespace"))
        result: dict[str, Any] = self.request("POST", path, obj, {"fieldManager": FIELD_MANAGER}, retry=retry)
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None, body: dict[str, Any] | None = None) -> bool:
        """Delete; False when it was already gone."""
        try:
            self.request("DELETE", path_for(kind, name, namespace), body or {"propagationPolicy": "Background"})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def evict(self, name: str, namespace: str) -> None:
        """Evict a pod through the Eviction API, so PodDisruptionBudgets hold (429 when one blocks it)."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        self.request("POST", path_for("Pod", name, namespace, "eviction"), body, retry=False)  # its 429 is the PDB's

    def wait_established(self, crd_name: str, timeout: float = 30.0) -> None:
        """Wait until a CRD is served (its Established condition is True)."""
        deadline = time.monotonic() + timeout
        while True:
            crd = self.get("CustomResourceDefinition", crd_name) or {}
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CustomResourceDefinition {crd_name} not established after {timeout:.0f}s")
            time.sleep(0.2)

    def api_groups(self) -> frozenset[str]:
        """The served API groups by name, but for the groups of optional kinds: the optional kinds served, as
        "<group>/<plural>" (kinds.served), read from their group-version (one GET each where the group is served)."""
        groups = self.request("GET", "/apis").get("groups") or []
        versions = {g["name"]: {v.get("version") for v in g.get("versions") or []} for g in groups}
        optional = [k for k in registry().values() if k.optional]
        out = set(versions) - {k.group for k in optional}
        for api_version in sorted({k.api_version for k in optional if k.version in versions.get(k.group, ())}):
            try:
                listed = self.request("GET", f"/apis/{api_version}").get("resources") or []
            except ApiError as exc:
                if exc.status != 404:  # 404: gone since /apis was read
                    raise
                listed = []
            names = {r.get("name") for r in listed}
            out |= {k.resource for k in optional if k.api_version == api_version and k.plural in names}
        return frozenset(out)


class DryRunKube(Kube):
    """Reads go to the API server; writes are recorded, not sent: what the operator would do now.

    A recorded write answers as the server would in the simplest case (an apply or create returns its body, a
    merge patch the object as read now with the patch applied), so one reconcile pass runs to its end."""

    def __init__(self, api_client: client.ApiClient):
        super().__init__(api_client)
        self.recorded: list[tuple[str, str, Any]] = []  # (verb, path, body)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str | None = None,
        timeout: float = 30,
        decode: Callable[[bytes], Any] = json.loads,
        retry: bool = True,
    ) -> Any:
        if method == "GET":
            return super().request(method, path, body, query, content_type, timeout, decode, retry)
        self._count(method, path)
        parsed = json.loads(body) if isinstance(body, str) else body
        self.recorded.append((method, path, parsed))
        return parsed if method in ("POST", "PUT") or (content_type or "").startswith("application/apply") else {}

    def merge_patch(
        self,
        kind: str,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        # One not there (the policy of a --policy file, say) as if it were: a pass that patches it goes on.
        there = {"name": name, **({"namespace": namespace} if namespace else {})}
        current = self.get(kind, name, namespace) or {"metadata": there}
        super().merge_patch(kind, name, patch, namespace, sub, retry)
        answer: dict[str, Any] = merge_patched(current, patch)
        return answer


def merge_patched(target: Any, patch: Any) -> Any:
    """`patch` applied to `target` as the API server applies a JSON merge patch (RFC 7386): objects merge key by
    key, a null removes the key, anything else (a list too) replaces what was there."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patched(out.get(k), v)
    return out
