"""``clustergnn serve | up | down``: run the cluster (coordinator, owners, gateway).

* ``serve --config FILE`` runs a cluster against existing Kafka (and Ray, with ``--ray-address``) until
  SIGTERM/SIGINT: what a KubeRay head runs.
* ``up`` starts the embedded broker and a local ``serve`` in the background on 127.0.0.1, loads a dataset's
  initial graph and returns once the gateway is healthy; ``down`` stops exactly those two processes.

``clustergnn demo`` lives in ``actors/demo.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from clustergnn.config import Config, ConfigError, is_loopback

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    from streams.broker import cache_dir

    return cache_dir()


# ---------------------------------------------------------------------------------------------- serve
SERVE_DRAIN_BOUND_S = 30.0
"""How long ``serve`` may take from SIGTERM to exit: the round in flight (joined for up to 30 s), the
owners' close (10 s each at most) and Ray's shutdown; measured 2.5-2.8 s from SIGTERM to exit (3 runs,
P = 4, collegemsg loaded, idle, unit tests running beside) on the 2-core dev machine."""


def cmd_serve(args: argparse.Namespace) -> int:
    log.info("serve starting (pid %s)", os.getpid())
    from actors.cluster import Cluster
    from actors.gateway.server import GatewayServer

    try:
        cfg = Config.from_file(args.config) if args.config else Config()
        if args.ray_address:
            cfg = cfg.replace(cluster={"ray_address": args.ray_address})
        cfg.gateway.require_secure()  # before anything starts
    except (ConfigError, OSError, ValueError) as exc:
        print(f"clustergnn serve: bad config: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set():
            log.info(
                "%s: draining (finishing the round, closing the consumers, stopping Ray)", signal.Signals(signum).name
            )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    cluster = Cluster(cfg).start()
    # ray.init installs its own SIGTERM handler (sys.exit(15), and an abort if it lands in Ray's shutdown):
    # ours goes back on top of it, so SIGTERM drains and serve exits 0 (a Kubernetes rollout sends it)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    gateway = None
    try:
        if cluster.restored is not None:  # the snapshot holds the initial graph: never write it twice
            if cfg.graph.dataset:
                print(
                    f"resumed from snapshot {cluster.restored.snapshot_id} (round {cluster.restored.round_id}): "
                    f"not loading {cfg.graph.dataset}'s initial graph again",
                    flush=True,
                )
        elif cfg.graph.dataset and cluster.topic_created:  # a fresh log: write the initial graph into it once
            t = time.time()
            cluster.load_dataset(cfg.graph.dataset)
            print(f"loaded {cfg.graph.dataset}'s initial graph in {time.time() - t:.1f}s", flush=True)
        gateway = GatewayServer(cluster, cfg.gateway).start()
        print(
            f"clustergnn serving on {gateway.target} ({cfg.cluster.partitions} partitions, "
            f"metrics port {gateway.metrics_port})",
            flush=True,
        )
        while not stop.wait(0.5):
            if cluster.error is not None:
                print(f"cluster stopped serving: {cluster.error!r}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        t = time.monotonic()
        if gateway is not None:
            gateway.stop()
        cluster.stop()
        if stop.is_set():
            print(f"drained and stopped in {time.monotonic() - t:.1f}s", flush=True)


# ---------------------------------------------------------------------------------------------- up / down
DEFAULT_NAME = "default"
DEFAULT_PORTS = {"port": 50051, "metrics_port": 9464, "broker_port": 9092}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


def clusters_dir() -> Path:
    d = _cache_dir() / "clusters"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cluster_dir(name: str) -> Path:
    if not _NAME_OK.match(name):
        raise ValueError(f"cluster name must be 1-40 letters, digits, '_', '-' or '.', got {name!r}")
    return clusters_dir() / name


def load_state(name: str) -> dict | None:
    """What ``up --name NAME`` wrote down (gateway target, ports, pids, credentials), or None."""
    path = cluster_dir(name) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def local_clusters() -> list[dict]:
    """Every cluster ``up`` started for this user, each with ``alive`` (its serve process still runs)."""
    out = []
    for d in sorted(clusters_dir().iterdir()):
        st = load_state(d.name) if d.is_dir() and _NAME_OK.match(d.name) else None
        if st is not None:
            st["alive"] = _alive(int(st["serve_pid"])) and _is_our_serve(int(st["serve_pid"]))
            out.append(st)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _is_our_serve(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmd and any(b"actors.cli" in c or c.endswith(b"clustergnn") for c in cmd)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children of children too), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_healthy(target: str, timeout_s: float, proc: subprocess.Popen | None = None, **creds) -> None:
    """Poll the gateway at ``target`` until its cluster says it serves (``Status.healthy``: after a start,
    once every partition has replayed its log; reads before that fail with UNAVAILABLE), as a readiness
    probe does.  ``proc``: the serve process, whose exit ends the wait at once.  Raises on timeout."""
    from actors.gateway.client import GatewayClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"clustergnn serve exited with code {proc.returncode}")
        try:
            with GatewayClient(target, **creds) as c:
                if c.status(timeout_s=2).healthy:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"gateway {target} not healthy after {timeout_s:.0f}s (last error: {last})")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by this user only (mode 0600 from the start)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def self_signed(dns_names: list[str], ips: list[str] = (), days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed EC certificate (PEM) for ``dns_names``/``ips`` and its PKCS#8 key (PEM): what
    ``openssl req -x509 -addext subjectAltName=...`` gives."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(pem), key_pem


def make_secure_files(d: Path) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost, its key and a random bearer token, mode 0600."""
    import secrets

    cert, key = self_signed(["localhost"], ["127.0.0.1"])
    files = {"tls_cert": d / "tls.crt", "tls_key": d / "tls.key", "token_file": d / "token"}
    _write_private(files["tls_cert"], cert)
    _write_private(files["tls_key"], key)
    _write_private(files["token_file"], (secrets.token_urlsafe(32) + "\n").encode())
    return {k: str(v) for k, v in files.items()}


def up_config(args: argparse.Namespace, bootstrap: str, secure: dict[str, str] | None) -> Config:
    """The user's ``--config`` (or the defaults) with only what ``up`` must set: the embedded broker,
    loopback ports, the model file, and the dataset/partitions when given on the command line."""
    from clustergnn.config import read_file

    data = Config().to_dict()
    for section, values in (read_file(args.config) if args.config else {}).items():
        if section in data and isinstance(values, dict):
            data[section].update(values)
        else:
            data[section] = values  # Config.from_dict names what is wrong with it
    if data["cluster"].get("ray_address"):
        raise ConfigError(
            f"clustergnn up starts its own local Ray; cluster.ray_address={data['cluster']['ray_address']!r} "
            "is for `clustergnn serve` (unset it, or run serve)"
        )
    host = data["gateway"].get("host", "127.0.0.1")
    if not is_loopback(host):
        raise ConfigError(f"clustergnn up serves on 127.0.0.1 only; gateway.host={host!r} is for `clustergnn serve`")
    data["kafka"]["bootstrap"] = bootstrap
    gw = data["gateway"]
    gw.update(host="127.0.0.1", port=args.port, metrics_port=args.metrics_port)
    if secure:
        gw.update(tls_cert=secure["tls_cert"], tls_key=secure["tls_key"], tokens_file=secure["token_file"])
        gw.update(insecure_local=False, tokens=None)
    else:
        gw.update(insecure_local=True)
    if args.dataset is not None or not args.config:
        data["graph"]["dataset"] = args.dataset or "collegemsg"
    if args.partitions is not None or not args.config:
        data["cluster"]["partitions"] = args.partitions or 4
    if args.collaborative:
        data["cluster"]["collaborative"] = True
    if args.model is not None:
        data["model"]["path"] = str(Path(args.model).resolve())
    if args.allow_pickle:
        data["model"]["allow_pickle"] = True
    return Config.from_dict(data)


def cmd_up(args: argparse.Namespace) -> int:
    from streams.broker import start_detached

    try:
        d = cluster_dir(args.name)
    except ValueError as exc:
        print(f"clustergnn up: {exc}", file=sys.stderr)
        return 2
    asked = {k: getattr(args, k) for k in DEFAULT_PORTS}
    mine = load_state(args.name)
    others = [c for c in local_clusters() if c["alive"] and c["name"] != args.name]
    if mine is not None and _alive(mine["serve_pid"]) and _is_our_serve(mine["serve_pid"]):
        clash = {k: v for k, v in asked.items() if v is not None and v != mine["ports"][k]}
        if clash:
            print(
                f"clustergnn up: cluster {args.name!r} is already up with {_ports_text(mine['ports'])}, not "
                f"{_ports_text(clash)}; give another --name for a second cluster, or `clustergnn down --name "
                f"{args.name}` first",
                file=sys.stderr,
            )
            return 1
        print(
            f"cluster {args.name!r} is already up: gateway {mine['target']} (serve pid {mine['serve_pid']}), broker "
            f"port {mine['ports']['broker_port']}; `clustergnn down --name {args.name}` stops it"
        )
        return 0
    ports = {k: v if v is not None else DEFAULT_PORTS[k] for k, v in asked.items()}
    for other in others:  # a port another of our clusters holds: say which
        for k, v in ports.items():
            held = [kk for kk, vv in other["ports"].items() if vv == v]
            if held:
                print(
                    f"clustergnn up: port {v} (--{k.replace('_', '-')}) is held by cluster {other['name']!r} "
                    f"(its {held[0].replace('_', ' ')}; gateway {other['target']}). Give other ports for cluster "
                    f"{args.name!r}, e.g. --port {v + 1}, or `clustergnn down --name {other['name']}`",
                    file=sys.stderr,
                )
                return 1
    busy = [f"{v} (--{k.replace('_', '-')})" for k, v in ports.items() if v and not _port_free(v)]
    if busy:
        print(f"clustergnn up: port(s) {', '.join(busy)} in use by another program on 127.0.0.1", file=sys.stderr)
        return 1
    args.port, args.metrics_port, args.broker_port = ports["port"], ports["metrics_port"], ports["broker_port"]
    d.mkdir(parents=True, exist_ok=True)
    secure = make_secure_files(d) if args.secure else None
    try:  # checked before anything starts
        cfg = up_config(args, f"127.0.0.1:{args.broker_port}", secure)
        if cfg.model.path is not None:
            from clustergnn.models import feature_dim, load_layers
            from clustergnn.rules import rules_from_dgl

            layers = load_layers(cfg.model)  # a bad model fails here, with its message, before a process starts
            rules_from_dgl(layers, feature_dim(layers))
    except (ConfigError, OSError, ValueError, TypeError) as exc:  # UnsupportedModelError is a TypeError
        print(f"clustergnn up: bad config: {exc}", file=sys.stderr)
        return 2
    broker = start_detached(args.broker_port)
    print(f"broker: {broker.bootstrap} (pid {broker.pid})", flush=True)
    cfg_path = d / "config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2))
    log_path = d / "serve.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "serve", "--config", str(cfg_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
    target = f"127.0.0.1:{args.port}"
    state = {
        "name": args.name,
        "serve_pid": proc.pid,
        "broker_pid": broker.pid,
        "target": target,
        "ports": ports,
        "log": str(log_path),
        "config": str(cfg_path),
        "secure": bool(secure),
        **({"root_cert": secure["tls_cert"], "token_file": secure["token_file"]} if secure else {}),
    }
    (d / "state.json").write_text(json.dumps(state, indent=2))
    print(f"serve: pid {proc.pid}, log {log_path}; loading {cfg.graph.dataset or 'no dataset'} ...", flush=True)
    try:
        wait_healthy(target, args.timeout_s, proc, **credentials(state))
    except (TimeoutError, RuntimeError) as exc:
        print(f"clustergnn up failed: {exc}; see {log_path}", file=sys.stderr)
        return 1
    flag = "" if args.name == DEFAULT_NAME else f" --name {args.name}"
    print(f"up: cluster {args.name!r}, gateway {target} healthy ({cfg.cluster.partitions} partitions)")
    if secure:
        print(
            f"  TLS with a self-signed certificate ({secure['tls_cert']}) and a bearer token ({secure['token_file']}), "
            f"both mode 0600; `clustergnn query/status{flag}` use them"
        )
    else:
        print(
            "  plaintext gRPC without a token, on 127.0.0.1 only: anyone on this machine can read and write. "
            "`up --secure` adds TLS and a token"
        )
    print(f"  try: clustergnn query 1 2 3{flag} ; clustergnn status{flag} ; clustergnn down{flag}")
    return 0


def _ports_text(ports: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ports.items())


def credentials(state: dict) -> dict:
    """``GatewayClient`` keyword arguments for a cluster ``up`` started (its token and certificate)."""
    if not state.get("secure"):
        return {}
    from actors.gateway.env import parse_tokens

    tokens = parse_tokens(Path(state["token_file"]).read_text())
    return {"token": tokens[0], "root_cert": Path(state["root_cert"])}


def _stop_one(state: dict) -> None:
    from streams.broker import stop_detached

    pid = int(state["serve_pid"])
    if _alive(pid) and _is_our_serve(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SERVE_DRAIN_BOUND_S + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            print(f"serve (pid {pid}) did not drain in time: killed")
        else:
            print(f"stopped serve of {state['name']!r} (pid {pid})")
    rec = stop_detached(int(state["ports"]["broker_port"]))
    if rec is not None:
        print(f"stopped broker of {state['name']!r} (pid {rec.pid})")


def cmd_down(args: argparse.Namespace) -> int:
    import shutil

    names = [c["name"] for c in local_clusters()] if args.all else [args.name]
    if not names:
        print("no local clusters")
        return 0
    for name in names:
        try:
            state = load_state(name)
        except ValueError as exc:
            print(f"clustergnn down: {exc}", file=sys.stderr)
            return 2
        if state is None:
            known = [c["name"] for c in local_clusters()]
            print(f"no cluster named {name!r} is up (local clusters: {known or 'none'})")
            continue
        _stop_one(state)
        shutil.rmtree(cluster_dir(name), ignore_errors=True)
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    rows = local_clusters()
    if not rows:
        print("no local clusters (`clustergnn up` starts one)")
        return 0
    print(f"{'name':<16} {'state':<6} {'gateway':<22} {'broker':>6} {'metrics':>7} {'serve pid':>9}  security")
    for c in rows:
        p = c["ports"]
        print(
            f"{c['name']:<16} {'up' if c['alive'] else 'DEAD':<6} {c['target']:<22} {p['broker_port']:>6} "
            f"{p['metrics_port'] if p['metrics_port'] else '-':>7} {c['serve_pid']:>9}  "
            f"{'TLS + token' if c['secure'] else 'plaintext, no token'}"
        )
    return 0


# ---------------------------------------------------------------------------------------------- wiring
def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run a cluster (owners, coordinator, gateway) until SIGTERM")
    s.add_argument("--config", type=Path, default=None, help="JSON or YAML config (clustergnn/config.py)")
    s.add_argument("--ray-address", default=None, help="join an existing Ray cluster (e.g. auto in KubeRay)")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("up", help="start broker + local cluster + gateway on 127.0.0.1 in the background")
    u.add_argument("--name", default=DEFAULT_NAME, help="the cluster's name; several can run (default: %(default)s)")
    u.add_argument("--config", type=Path, default=None, help="your JSON or YAML config (docs/config.md) as the base")
    u.add_argument("--model", default=None, help="trained weights (docs/models.md); sets model.path")
    u.add_argument(
        "--allow-pickle", action="store_true", help="let --model be a pickled module (unpickling runs its code)"
    )
    u.add_argument("--dataset", default=None, help="initial graph (default: collegemsg, or the config's)")
    u.add_argument("--partitions", type=int, default=None, help="partition owners (default: 4, or the config's)")
    u.add_argument("--collaborative", action="store_true", help="finish the last layer at read time (STAG)")
    u.add_argument("--port", type=int, default=None, help=f"gateway port (default {DEFAULT_PORTS['port']})")
    u.add_argument("--metrics-port", type=int, default=None, help=f"default {DEFAULT_PORTS['metrics_port']}")
    u.add_argument("--broker-port", type=int, default=None, help=f"default {DEFAULT_PORTS['broker_port']}")
    u.add_argument("--secure", action="store_true", help="TLS (self-signed) and a generated token, files mode 0600")
    u.add_argument("--timeout-s", type=float, default=300)
    u.set_defaults(func=cmd_up)

    d = sub.add_parser("down", help="stop what `up` started (only those processes)")
    d.add_argument("--name", default=DEFAULT_NAME, help="which cluster (default: %(default)s)")
    d.add_argument("--all", action="store_true", help="every local cluster")
    d.set_defaults(func=cmd_down)

    c = sub.add_parser("clusters", help="list the local clusters `up` started")
    c.set_defaults(func=cmd_clusters)
