"""A small synchronous Kubernetes API client for the node agent and the tests.

Why not the ``kubernetes`` package: the agent runs on every node of a cluster, and that client
costs tens of MB and a second of imports for the five requests per interval the agent makes.
This client speaks JSON over HTTPS with the standard library, reads in-cluster credentials (the
projected token is re-read on every request, because bound tokens rotate) or a kubeconfig, and
can impersonate a user with extras, which is how tests act as the agent's service account.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# How a kept-alive connection the server closed while it was idle fails on its next use (over TLS
# the close arrives as an unexpected EOF): sent again once on a new connection.
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                    ssl.SSLEOFError, ssl.SSLZeroReturnError)


class ApiError(Exception):
    """The API server refused a request; ``status`` is the HTTP code, ``message`` its Status message.

    A request that got no complete answer (refused, reset, timed out, cut off) raises ``OSError``
    instead: such a write may or may not have landed, and callers must not assume either."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str, retry_after: float | None = None) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # seconds, from a 429's (or 503's) Retry-After header


GONE, CONFLICT, RETRY, REFUSED = "gone", "conflict", "retry", "refused"


def outcome(exc: BaseException) -> str:
    """What a failed request means for the caller, decided in one place:

    - ``gone`` (404): the object was deleted meanwhile; nothing left to do;
    - ``conflict`` (409, or 422 from a JSON patch's ``test``): it changed since it was read; plan again
      from the newer state;
    - ``retry`` (no answer, 429 after the client's own waits, 5xx): try again later, backing off; a
      request without an answer may or may not have landed;
    - ``refused`` (any other status, e.g. 400, 403): the request itself is wrong; retrying as it is will
      fail again, so it is logged as an error (and retried with back-off in case RBAC or a webhook changes).
    """
    if isinstance(exc, ApiError):
        if exc.status == 404:
            return GONE
        if exc.status in (409, 422):
            return CONFLICT
        if exc.status == 429 or exc.status >= 500:
            return RETRY
        return REFUSED
    return RETRY


def _api_error(status: int, reason: str, raw: bytes, retry_after: str | None, method: str, path: str) -> ApiError:
    """The API server's refusal, from its Status body (or the raw text when it sent none)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {"reason": reason, "message": raw.decode(errors="replace")}
    return ApiError(status, str(payload.get("reason", reason)), str(payload.get("message", "")), method, path,
                    retry_after=_seconds(retry_after))


class ConfigError(Exception):
    """No usable credentials (neither in-cluster nor a kubeconfig)."""


@dataclass
class ExecPlugin:
    """A kubeconfig ``user.exec`` credential plugin (cloud CLIs, OIDC helpers): run when a token is
    needed and cached until the expiry it reports. Only tokens are taken from it; a plugin answering
    with a client certificate is refused with a clear error."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    base: Path = Path(".")
    _token: str | None = None
    _expires: datetime.datetime | None = None

    def token(self) -> str:
        now = datetime.datetime.now(datetime.UTC)
        if self._token is not None and (self._expires is None or now < self._expires - datetime.timedelta(seconds=10)):
            return self._token
        command = self.command
        if os.sep in command and not os.path.isabs(command):
            command = str(self.base / command)  # kubectl resolves a relative path against the kubeconfig's directory
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            done = subprocess.run([command, *self.args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"exec credential plugin {self.command!r} could not run: {exc}") from exc
        if done.returncode != 0:
            raise ConfigError(f"exec credential plugin {self.command!r} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        try:
            status = json.loads(done.stdout).get("status") or {}
        except ValueError as exc:
            raise ConfigError(f"exec credential plugin {self.command!r} printed no ExecCredential JSON: {exc}") from exc
        if not status.get("token"):
            raise ConfigError(f"exec credential plugin {self.command!r} returned no token (client certificates from plugins are not supported)")
        self._token = str(status["token"])
        expiry = status.get("expirationTimestamp")
        self._expires = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00")) if expiry else None
        return self._token

    @property
    def expires(self) -> datetime.datetime | None:
        return self._expires


@dataclass
class Credentials:
    """Where the API server is and how to authenticate to it. The PEM data is kept in memory (for
    kopf's login, which is derived from these credentials); nothing is left on disk."""

    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None
    token_file: Path | None = None
    exec_plugin: ExecPlugin | None = None
    ca_pem: bytes | None = None
    ca_file: Path | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        if self.exec_plugin is not None:
            return self.exec_plugin.token()
        return self.token


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (the API server sends integers); None when absent or a date."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


def _pem(data_b64: str | None, path: str | None, base: Path) -> bytes | None:
    """A kubeconfig names certificates and keys by path or embeds them (base64)."""
    if data_b64:
        return base64.b64decode(data_b64)
    if path:
        return ((base / path) if not os.path.isabs(path) else Path(path)).read_bytes()
    return None


def _context(ca_pem: bytes | None, cert_pem: bytes | None, key_pem: bytes | None) -> ssl.SSLContext:
    """An SSL context from PEM data. ``ssl`` loads a client certificate only from files, so those are
    written to a private temporary directory for the call and removed at once."""
    context = ssl.create_default_context(cadata=ca_pem.decode() if ca_pem else None)
    if cert_pem and key_pem:
        with tempfile.TemporaryDirectory(prefix="armcpu-kube-") as tmp:
            cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            cert.write_bytes(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            context.load_cert_chain(str(cert), str(key))
    return context


def load_kubeconfig(path: Path, context: str | None = None) -> Credentials:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a kubeconfig")
    ctx_name = context or doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts", [])}
    if ctx_name not in contexts:
        raise ConfigError(f"{path}: context {ctx_name!r} not found")
    ctx = contexts[ctx_name]
    cluster = {c["name"]: c["cluster"] for c in doc.get("clusters", [])}[ctx["cluster"]]
    user = {u["name"]: u["user"] for u in doc.get("users", [])}.get(ctx.get("user"), {}) or {}
    base = path.parent
    ca = _pem(cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), base)
    cert = _pem(user.get("client-certificate-data"), user.get("client-certificate"), base)
    key = _pem(user.get("client-key-data"), user.get("client-key"), base)
    plugin = None
    if user.get("exec"):
        spec = user["exec"]
        plugin = ExecPlugin(command=str(spec["command"]), args=tuple(str(a) for a in spec.get("args") or ()),
                            env=tuple((str(e["name"]), str(e["value"])) for e in spec.get("env") or ()),
                            api_version=str(spec.get("apiVersion") or ExecPlugin.api_version), base=base)
    token_file = Path(user["tokenFile"]) if user.get("tokenFile") else None
    return Credentials(server=cluster["server"].rstrip("/"), ssl_context=_context(ca, cert, key), token=user.get("token"),
                       token_file=token_file, exec_plugin=plugin, ca_pem=ca, cert_pem=cert, key_pem=key)


def in_cluster() -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (SERVICE_ACCOUNT_DIR / "token").exists():
        raise ConfigError("not running in a pod (no KUBERNETES_SERVICE_HOST or service-account token); pass --kubeconfig")
    if ":" in host:
        host = f"[{host}]"
    ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    return Credentials(server=f"https://{host}:{port}", ssl_context=ctx, token_file=SERVICE_ACCOUNT_DIR / "token",
                       ca_file=SERVICE_ACCOUNT_DIR / "ca.crt")


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """An explicit kubeconfig, else $KUBECONFIG, else in-cluster credentials."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return load_kubeconfig(Path(path), context)
    return in_cluster()


@dataclass
class Kube:
    """JSON requests to one API server. ``on_write`` is told about every write (for metrics)."""

    credentials: Credentials
    impersonate_user: str | None = None
    impersonate_extra: Mapping[str, list[str]] = field(default_factory=dict)
    timeout: float = 30.0
    on_write: Callable[[str, str, int], None] | None = None
    throttle_retries: int = 3  # a 429 (API priority and fairness, max-inflight) was not processed: wait as told and send again
    max_retry_after: float = 10.0
    # one kept-alive connection per thread: a TLS handshake per request cost more CPU than the request (benchmarks/clients.py)
    _pool: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    def _prepare(self, method: str, path: str, data: bytes | None, content_type: str,
                 query: Mapping[str, str] | None, accept: str | None = None) -> urllib.request.Request:
        url = self.credentials.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", accept or JSON)
        if data is not None:
            req.add_header("Content-Type", content_type)
        token = self.credentials.bearer()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if self.impersonate_user:
            req.add_header("Impersonate-User", self.impersonate_user)
            for key, values in self.impersonate_extra.items():
                header = "Impersonate-Extra-" + urllib.parse.quote(key.lower(), safe="")
                for value in values:
                    req.add_header(header, value)
        return req

    def request(self, method: str, path: str, body: object = None, content_type: str = JSON,
                query: Mapping[str, str] | None = None, accept: str | None = None) -> Any:
        """One request; ``accept`` overrides the Accept header (e.g. to ask for metadata only). A 429
        is sent again after its Retry-After (at most ``max_retry_after`` seconds, ``throttle_retries``
        times): the server refused it before doing anything, so a write cannot land twice."""
        for attempt in range(self.throttle_retries + 1):
            try:
                return self._request_once(method, path, body, content_type, query, accept)
            except ApiError as exc:
                if exc.status != 429 or attempt == self.throttle_retries:
                    raise
                time.sleep(min(self.max_retry_after, exc.retry_after if exc.retry_after is not None else 1.0 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to the API server, and whether it was used before."""
        conn: http.client.HTTPConnection | None = getattr(self._pool, "conn", None)
        if conn is not None:
            return conn, True
        parts = urllib.parse.urlsplit(self.credentials.server)
        host = parts.hostname or ""
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=self.timeout, context=self.credentials.ssl_context)
        else:
            conn = http.client.HTTPConnection(host, parts.port or 80, timeout=self.timeout)
        self._pool.conn = conn
        return conn, False

    def close(self) -> None:
        """Close this thread's kept-alive connection (the next request opens a new one)."""
        self._drop_connection()

    def _drop_connection(self) -> None:
        conn = getattr(self._pool, "conn", None)
        self._pool.conn = None
        if conn is not None:
            conn.close()

    def _proxied(self) -> bool:
        """An HTTP(S) proxy applies to the server (HTTPS_PROXY and NO_PROXY, as urllib reads them):
        requests then go through urllib, which speaks to proxies, one connection each. Read from the
        environment once per thread, like its connection, not at every request."""
        proxied: bool | None = getattr(self._pool, "proxied", None)
        if proxied is None:
            parts = urllib.parse.urlsplit(self.credentials.server)
            proxied = self._pool.proxied = (bool(urllib.request.getproxies().get(parts.scheme))
                                            and not urllib.request.proxy_bypass(parts.hostname or ""))
        return proxied

    def _request_once(self, method: str, path: str, body: object, content_type: str,
                      query: Mapping[str, str] | None, accept: str | None) -> Any:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()  # bytes: encoded already
        if self._proxied():
            return self._request_urllib(method, path, data, content_type, query, accept)
        req = self._prepare(method, path, data, content_type, query, accept)
        target = urllib.parse.urlsplit(req.full_url)
        headers = dict(req.header_items())
        status = 0
        try:
            for attempt in (0, 1):
                conn, reused = self._connection()
                try:
                    conn.request(method, target.path + (f"?{target.query}" if target.query else ""), body=data, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                except STALE_CONNECTION as exc:
                    self._drop_connection()
                    if reused and attempt == 0:
                        continue  # a kept-alive connection the server had closed while idle: the request never reached it
                    raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                except http.client.HTTPException as exc:  # a response cut off mid-way: a transport failure like a reset
                    self._drop_connection()
                    raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                except OSError:
                    self._drop_connection()
                    raise
                if resp.will_close:
                    self._drop_connection()
                status = resp.status
                break
        finally:
            if method in WRITE_METHODS and self.on_write is not None:
                self.on_write(method, path, status)
        if status >= 400:
            raise _api_error(status, resp.reason, raw, resp.getheader("Retry-After"), method, path)
        return json.loads(raw) if raw else None

    def _request_urllib(self, method: str, path: str, data: bytes | None, content_type: str,
                        query: Mapping[str, str] | None, accept: str | None) -> Any:
        req = self._prepare(method, path, data, content_type, query, accept)
        status = 0
        try:
            with urllib.request.urlopen(req, context=self.credentials.ssl_context, timeout=self.timeout) as resp:
                status = resp.status
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            raise _api_error(exc.code, str(exc.reason), exc.read(), exc.headers.get("Retry-After"), method, path) from None
        except http.client.HTTPException as exc:  # a response cut off mid-way: a transport failure like a reset
            raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            if method in WRITE_METHODS and self.on_write is not None:
                self.on_write(method, path, status)
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 290, accept: str | None = None) -> Iterator[dict[str, Any]]:
        """The watch events of a collection from ``resource_version`` (bookmarks included), one per
        line, until the server ends the watch after ``timeout_seconds``. An expired version comes as
        an ``ERROR`` event with code 410: the caller lists again."""
        query = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds)}
        req = self._prepare("GET", path, None, JSON, query, accept)
        try:
            with urllib.request.urlopen(req, context=self.credentials.ssl_context, timeout=timeout_seconds + 30) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, str(exc.reason), exc.read().decode(errors="replace")[:500], "WATCH", path) from None
        except http.client.HTTPException as exc:
            raise ConnectionError(f"WATCH {path}: {type(exc).__name__}: {exc}") from exc

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: object) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: object) -> Any:
        return self.request("PATCH", path, body, MERGE_PATCH)

    def json_patch(self, path: str, ops: list[dict[str, Any]] | bytes) -> Any:
        return self.request("PATCH", path, ops, JSON_PATCH)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
