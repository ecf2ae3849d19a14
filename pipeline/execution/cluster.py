"""Which Ray cluster a run uses, and connecting to it without hanging (issue 15 item 6).

Ray's own `ray.init()` takes the address from RAY_ADDRESS, else from the file
`<ray temp dir>/ray_current_cluster` that the last `ray start` (or `ray.cluster_utils.Cluster`)
wrote, else starts a local cluster; an address that nothing answers (a dead cluster's file,
a wrong RAY_ADDRESS) makes it retry for ever (docs/DESIGN.md). `connect` resolves the address the same
way, then checks that something listens there (a TCP connect, bounded by CONNECT_TIMEOUT_S)
and answers as Ray's GCS does (HTTP/2, bounded by PROBE_TIMEOUT_S) before handing it to Ray,
and fails with `ClusterUnreachableError` naming the address, where it came from, what answered
and the fix.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

import ray

from ..errors import ClusterUnreachableError

log = logging.getLogger("pipeline")
CONNECT_TIMEOUT_S = 5.0  # a refused connect is retried this long (a head still starting)
LOCAL = "local"


def address_file() -> str:
    """Where Ray records the last cluster started on this machine (RAY_TMPDIR moves it)."""
    from ray._common.utils import get_ray_address_file  # private, but the only source of the path
    return get_ray_address_file(None)


def resolve(address: str | None) -> tuple[str, str]:
    """(address or "local", where it came from) as `ray.init` would pick it."""
    if address not in (None, "", "auto"):
        return address, "address="
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "the RAY_ADDRESS environment variable"
    path = address_file()
    if os.path.isfile(path):
        with open(path) as f:
            recorded = f.read().strip()
        if recorded:
            return recorded, f"the cluster file {path} (left by the last `ray start`)"
    return LOCAL, "default"


def check_address(address: str | None = None) -> None:
    """Raise ClusterUnreachableError now if the run's cluster address answers nothing (no-op
    when Ray is already initialised or a local Ray will be started)."""
    if ray.is_initialized():
        return
    target, origin = resolve(address)
    if target != LOCAL:
        check_reachable(target, origin)


def connect(address: str | None = None, quiet: bool = False) -> bool:
    """Connect to the run's cluster or start a local one; True when this call started Ray.
    `quiet`: a local Ray started here logs warnings and errors only, not Ray's INFO lines
    ("Started a local Ray instance"): a notebook call prints one line (issue 24).

    Raises ClusterUnreachableError within CONNECT_TIMEOUT_S when the address answers nothing.
    """
    if ray.is_initialized():
        return False
    target, origin = resolve(address)
    if target == LOCAL:
        # No dashboard: 1 GB less memory and ~1 s faster (docs/DESIGN.md); jobs use `ray start`'s.
        with _worker_niceness(), _keep_sigterm_handler():
            _token_auth_explicitly()
            ray.init(address=LOCAL, include_dashboard=False,
                     **({"logging_level": logging.WARNING} if quiet else {}))
        return True
    check_reachable(target, origin)
    with _keep_sigterm_handler():
        ray.init(address=target, log_to_driver=True)
    return True


@contextmanager
def _keep_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler with `sys.exit(15)`; a handler the caller
    installed (the CLI's: one line, exit 143, through the driver's cleanup) is put back."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def check_reachable(address: str, origin: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterUnreachableError unless a TCP connect to `address`'s host:port succeeds."""
    host, port = _host_port(address, origin)
    deadline, error = time.monotonic() + timeout, None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(3.0, timeout)) as sock:
                what = _not_ray(sock)
        except OSError as e:
            error = e
        else:
            if what is None:
                return
            raise ClusterUnreachableError(
                f"something answers at {address} (from {origin}), but not a Ray cluster: {what}. "
                "Ray's address is the head's GCS port (6379 unless `ray start --port` chose "
                f"another), not its dashboard or job address (http://...:8265). {_fix(origin)}")
        if time.monotonic() + 1.0 > deadline:
            break
        time.sleep(1.0)
    raise ClusterUnreachableError(
        f"no Ray cluster answers at {address} (from {origin}): {error.strerror or error} after "
        f"{timeout:.0f} s. {_fix(origin)}")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROBE_TIMEOUT_S = 5.0


def _not_ray(sock: socket.socket) -> str | None:
    """None when the peer speaks gRPC (HTTP/2, as Ray's GCS and client server do), else what it
    did instead. A TCP connect alone let ray.init retry for ever against, say, an HTTP server
    (issue 24). The client preface is answered by the server's SETTINGS frame (type 4) at once.
    With RAY_USE_TLS the peer wants a TLS handshake first: not probed, trusted."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    sock.settimeout(PROBE_TIMEOUT_S)
    try:
        sock.sendall(_HTTP2_PREFACE)
        reply = sock.recv(256)
    except socket.timeout:
        return f"it sent nothing within {PROBE_TIMEOUT_S:.0f} s of an HTTP/2 (gRPC) greeting"
    except OSError as e:
        return f"it dropped the connection ({e.strerror or e})"
    if len(reply) >= 9 and reply[3] == 4:
        return None
    if not reply:
        return "it closed the connection on an HTTP/2 (gRPC) greeting"
    first = reply.strip().splitlines()[0][:80].decode("latin-1")
    http = reply.startswith(b"HTTP/") or b"<html" in reply.lower()
    return f"it replied {first!r}" + (" (an HTTP server)" if http else "")


def _fix(origin: str) -> str:
    if origin.startswith("the RAY_ADDRESS"):
        return ("Start the cluster or point RAY_ADDRESS at a live one; to run on a new local Ray "
                "instead, unset RAY_ADDRESS (or pass address='local', --address local)")
    if origin.startswith("the cluster file"):
        return (f"That cluster is gone: remove the stale file ({address_file()}) or run "
                "`ray stop`, or pass address='local' (--address local) to start a new local Ray")
    return "Check the address (host:port of the cluster's GCS, e.g. 10.0.0.1:6379), or pass address='local'"


def _host_port(address: str, origin: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1].rstrip("/")  # ray://host:10001 (Ray client) or host:port
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachableError(
            f"Ray address {address!r} (from {origin}) is not host:port. {_fix(origin)}")
    return host.strip("[]"), int(port)


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_auth_explicitly() -> None:
    """Ask for Ray's token authentication by name for the local Ray the pipeline starts.

    Unset, Ray turns token authentication on for a new local cluster anyway (and sets
    RAY_AUTH_MODE=token in this process, as this does) but prints "Token authentication is
    enabled ... Set RAY_AUTH_MODE=disabled to opt out" on every start (issue 24). Naming the mode
    Ray picks keeps the protection and drops the warning; turning it off would silence it too,
    but leave the local cluster open to anyone who can reach its ports. A value the user set
    (disabled, or token) wins; clusters the pipeline joins are never touched.

    Ray reads the mode into its config when imported, so the config is refreshed after setting
    it, with the (private) call ray.init itself makes when it turns the mode on; a Ray without
    that call keeps its default, warning included.
    """
    if AUTH_MODE_ENV in os.environ:
        return
    try:
        from ray._raylet import Config
    except ImportError:
        return
    os.environ[AUTH_MODE_ENV] = "token"
    Config.initialize("")


WORKER_NICENESS_ENV = "RAY_worker_niceness"


@contextmanager
def _worker_niceness():
    """Start a local Ray whose workers run at nice 0, not Ray's default 15.

    The engine actors are the work: at nice 15 on a small machine every wake-up of the raylet or
    GCS (nice 0) pre-empts an actor thread, and the other OpenMP thread waits for it at the next
    barrier. Measured side by side (docs/BENCHMARKS.md, 2 cores, warm actor): the in-actor forward
    ran at 74-76% of the bare engine at nice 15 and 92.6% at nice 0. A value the user set wins;
    a cluster started by `ray start` takes it from that command's environment.
    """
    if WORKER_NICENESS_ENV in os.environ:
        yield
        return
    os.environ[WORKER_NICENESS_ENV] = "0"  # read by ray.init when it starts the raylet
    try:
        yield
    finally:
        os.environ.pop(WORKER_NICENESS_ENV, None)
