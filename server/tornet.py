"""A private Tor network on loopback, for the tests and ``safepassage demo --tor``: real tor, no public network.

Three directory authorities (keys made with ``tor-gencert``) and one plain
relay form the network; then an onion-service tor (the server side publishes
through its control port), an applicant tor and a handler tor (with a
``ClientOnionAuthDir``) join it. Every tor gets the testing-network options and
the three ``DirAuthority`` lines: :func:`start_tor` refuses a torrc without
them, because a tor with a partial torrc falls back to the public network.

Waits are on signals (the authorities' consensus lists every relay; a client's
bootstrap reaches 100%), never on fixed sleeps. Every tor is stopped by its pid
at the end (SIGTERM, then SIGKILL); ``__OwningControllerProcess`` makes each one
exit by itself if the test process dies first. Facts behind the options:
the project's notes on a private Tor network (measured on this kind of machine).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import stem
import stem.control

#: Options a test torrc must contain, or tor would use the public network.
REQUIRED = ("TestingTorNetwork 1", "UseDefaultFallbackDirs 0", "DirAuthority ")
AUTHORITIES = 3
#: The whole network must be up within this (measured 9-26 s on this machine; CI may be slower).
NETWORK_DEADLINE = 180.0
#: The onion-side tors' detailed log (rendezvous, circuits, streams), beside notice.log.
ONION_LOG = "onion.log"


class TorNetError(RuntimeError):
    """The private network could not be built; the message names the tor and its last log lines."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tor_binary() -> str:
    path = shutil.which("tor") or ("/usr/sbin/tor" if Path("/usr/sbin/tor").exists() else None)
    if path is None:
        raise TorNetError("tor is not installed (apt-get install tor; make test installs it)")
    return path


@dataclass
class TorNode:
    name: str
    data_dir: Path
    control_port: int
    or_port: int = 0
    dir_port: int = 0
    socks_port: int = 0
    fingerprint: str = ""
    v3ident: str = ""
    process: subprocess.Popen[bytes] | None = None
    controller: stem.control.Controller | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "notice.log"

    def log_tail(self, lines: int = 15, name: str = "notice.log") -> str:
        try:
            return "\n".join((self.data_dir / name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def socks_url(self) -> str:
        return f"socks5://127.0.0.1:{self.socks_port}"


def check_torrc(text: str) -> None:
    """Refuse a torrc that could make tor talk to the public Tor network."""
    lines = [line.strip() for line in text.splitlines()]
    for needed in REQUIRED:
        if not any(line.startswith(needed) for line in lines):
            raise TorNetError(f"refusing to start a test tor whose torrc lacks {needed.strip()!r}")


def start_tor(node: TorNode, torrc: str, empty: Path) -> None:
    check_torrc(torrc)
    path = node.data_dir / "torrc"
    path.write_text(torrc)
    # --defaults-torrc: Debian's defaults file must not add anything of its own.
    node.process = subprocess.Popen(  # noqa: S603 (tor from PATH; the torrc is ours, checked above)
        [tor_binary(), "-f", str(path), "--defaults-torrc", str(empty)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def stop_tor(node: TorNode) -> None:
    if node.controller is not None:
        with contextlib.suppress(Exception):
            node.controller.close()
        node.controller = None
    proc = node.process
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class TorNet:
    """The running network. ``service`` publishes onions; ``applicant`` and ``handler`` are clients."""

    base: Path
    authorities: list[TorNode]
    relay: TorNode
    service: TorNode
    applicant: TorNode
    handler: TorNode
    bootstrap_seconds: float = 0.0

    @property
    def nodes(self) -> list[TorNode]:
        return [*self.authorities, self.relay, self.service, self.applicant, self.handler]

    @property
    def handler_auth_dir(self) -> Path:
        return self.handler.data_dir / "onion-auth"

    def reload_handler_auth(self) -> None:
        """Make the handler's tor reread its ClientOnionAuthDir (what a person does with SIGHUP)."""
        if self.handler.controller is None:
            raise TorNetError("the handler tor is not running")
        self.handler.controller.signal(stem.Signal.RELOAD)

    def torrc_for(self, name: str, data_dir: Path, control_port: int, extra: list[str]) -> str:
        """A testing-network torrc for another tor (used by tests that launch one of their own)."""
        return _common(self, name, data_dir, control_port) + "\n".join(extra) + "\n"

    def network_options(self) -> dict[str, str | list[str]]:
        """The testing-network options as a stem config dict (for a tor the server launches)."""
        empty = str(self.base / "empty")
        return {
            "TestingTorNetwork": "1",
            "UseDefaultFallbackDirs": "0",
            "DirAuthority": [_dir_authority_line(a) for a in self.authorities],
            "AssumeReachable": "1",
            "PathsNeededToBuildCircuits": "0.67",
            "V3AuthNIntervalsValid": "2",
            "TestingDirAuthVoteGuard": "*",
            "ShutdownWaitLength": "0",
            "UseEntryGuards": "0",
            "GeoIPFile": empty,
            "GeoIPv6File": empty,
        }

    def stop(self) -> None:
        for node in reversed(self.nodes):
            stop_tor(node)

    def resources(self) -> dict[str, float]:
        """Resident memory (MB, summed) and CPU seconds (summed) of every tor, from /proc."""
        rss = cpu = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            pid = node.process.pid
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tick
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page / 1e6
        return {"rss_mb": rss, "cpu_seconds": cpu, "tors": float(len(self.nodes))}


def _dir_authority_line(a: TorNode) -> str:
    return f"{a.name} orport={a.or_port} v3ident={a.v3ident} 127.0.0.1:{a.dir_port} {a.fingerprint}"


def _common(
    net: TorNet | None, name: str, data_dir: Path, control_port: int, authorities: list[TorNode] | None = None
) -> str:
    auths = authorities if authorities is not None else (net.authorities if net else [])
    empty = data_dir.parent / "empty"
    lines = [
        "TestingTorNetwork 1",
        f"DataDirectory {data_dir}",
        "UseDefaultFallbackDirs 0",
        *(f"DirAuthority {_dir_authority_line(a)}" for a in auths),
        f"Nickname {name}",
        "AssumeReachable 1",
        "PathsNeededToBuildCircuits 0.67",
        "V3AuthNIntervalsValid 2",
        "TestingDirAuthVoteGuard *",
        "ShutdownWaitLength 0",
        f"ControlPort 127.0.0.1:{control_port}",
        "CookieAuthentication 1",
        f"__OwningControllerProcess {os.getpid()}",
        f"GeoIPFile {empty}",
        f"GeoIPv6File {empty}",
        f"Log notice file {data_dir / 'notice.log'}",
        "SafeLogging 1",
    ]
    return "\n".join(lines) + "\n"


def _relay_lines(node: TorNode) -> list[str]:
    return [
        "SocksPort 0",
        "Address 127.0.0.1",
        f"ORPort 127.0.0.1:{node.or_port}",
        "ExitRelay 0",
        "ExitPolicy reject *:*",
    ]


def _authority_lines(node: TorNode) -> list[str]:
    return [
        f"DirPort 127.0.0.1:{node.dir_port}",
        "AuthoritativeDirectory 1",
        "V3AuthoritativeDirectory 1",
        "AuthDirVoteStableGuaranteeMinUptime 0",
        "AuthDirFastGuarantee 1",
        "V3AuthVotingInterval 10",
        "V3AuthVoteDelay 2",
        "V3AuthDistDelay 2",
        "TestingV3AuthInitialVotingInterval 6",
        "TestingV3AuthInitialVoteDelay 2",
        "TestingV3AuthInitialDistDelay 2",
    ]


def _make_node(base: Path, name: str, *, or_port: int = 0, dir_port: int = 0, socks_port: int = 0) -> TorNode:
    data_dir = base / name
    data_dir.mkdir(mode=0o700)
    return TorNode(name, data_dir, free_port(), or_port=or_port, dir_port=dir_port, socks_port=socks_port)


def _relay_fingerprint(node: TorNode, empty: Path) -> str:
    # --list-fingerprint makes the relay keys and exits; it never connects anywhere.
    subprocess.run(  # noqa: S603 (tor from PATH, our own arguments)
        [
            tor_binary(),
            "--list-fingerprint",
            "-f",
            str(empty),
            "--defaults-torrc",
            str(empty),
            "--DataDirectory",
            str(node.data_dir),
            "--ORPort",
            f"127.0.0.1:{node.or_port}",
            "--Nickname",
            node.name,
            "--Address",
            "127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (node.data_dir / "fingerprint").read_text().split()[1]


def _authority_keys(node: TorNode) -> str:
    keys = node.data_dir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(  # noqa: S603 (tor-gencert from PATH, our own arguments)
        [
            shutil.which("tor-gencert") or "/usr/bin/tor-gencert",
            "--create-identity-key",
            "-m",
            "12",
            "-a",
            f"127.0.0.1:{node.dir_port}",
            "--passphrase-fd",
            "0",
            "-i",
            str(keys / "authority_identity_key"),
            "-s",
            str(keys / "authority_signing_key"),
            "-c",
            str(keys / "authority_certificate"),
        ],
        input=b"\n",
        check=True,
        capture_output=True,
        timeout=60,
    )
    for line in (keys / "authority_certificate").read_text().splitlines():
        if line.startswith("fingerprint "):
            return line.split()[1]
    raise TorNetError(f"{node.name}: tor-gencert wrote no fingerprint")


def _connect(node: TorNode, deadline: float) -> stem.control.Controller:
    """The first controller of a tor: it takes ownership, so it stays open for the network's life."""
    while True:
        if node.process is not None and node.process.poll() is not None:
            raise TorNetError(f"{node.name} exited with {node.process.returncode}:\n{node.log_tail()}")
        try:
            controller = stem.control.Controller.from_port("127.0.0.1", node.control_port)
            controller.authenticate()
            return controller
        except (stem.SocketError, stem.connection.AuthenticationFailure):
            if time.monotonic() > deadline:
                raise TorNetError(f"{node.name}: control port never answered:\n{node.log_tail()}") from None
            # Waiting for tor to open its control port: there is no signal to wait on before it exists.
            time.sleep(0.1)


def _wait(what: str, node: TorNode, deadline: float, check: Callable[[], bool]) -> None:
    while not check():
        if node.process is not None and node.process.poll() is not None:
            raise TorNetError(f"{node.name} exited while waiting for {what}:\n{node.log_tail()}")
        if time.monotonic() > deadline:
            raise TorNetError(f"{node.name}: timed out waiting for {what}:\n{node.log_tail()}")
        # Polling tor's own state (consensus, bootstrap phase) a few times a second.
        time.sleep(0.25)


def _consensus_size(controller: stem.control.Controller) -> int:
    try:
        return sum(1 for line in controller.get_info("ns/all", "").splitlines() if line.startswith("r "))
    except stem.ControllerError:
        return 0


def _bootstrapped(controller: stem.control.Controller) -> bool:
    try:
        return "PROGRESS=100" in controller.get_info("status/bootstrap-phase", "")
    except stem.ControllerError:
        return False


def _onion_side(node: TorNode) -> list[str]:
    """Options of the tors at either end of an onion connection (the service and the clients)."""
    return [
        "UseEntryGuards 0",
        # What each onion connection went through, for a failed test's report (tests/tornet.py).
        f"Log [rend,circ,edge]info file {node.data_dir / ONION_LOG}",
    ]


def _client_side(node: TorNode) -> list[str]:
    # A stream Tor cannot complete is refused after this long (default 120 s), so that the
    # clients' retry on a new circuit (client/http.py) gets its turn within a test's time.
    return [*_onion_side(node), "SocksTimeout 30"]


def build(base: Path) -> TorNet:
    """Start the network under ``base`` and return once the clients have bootstrapped."""
    tor_binary()
    if shutil.which("tor-gencert") is None:
        raise TorNetError("tor-gencert is missing (it ships in Debian's tor package)")
    started = time.monotonic()
    deadline = started + NETWORK_DEADLINE
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    empty = base / "empty"
    empty.write_text("")
    authorities = [_make_node(base, f"auth{i}", or_port=free_port(), dir_port=free_port()) for i in range(AUTHORITIES)]
    relay = _make_node(base, "relay0", or_port=free_port())
    for a in authorities:
        a.v3ident = _authority_keys(a)
    for n in [*authorities, relay]:
        n.fingerprint = _relay_fingerprint(n, empty)
    service = _make_node(base, "service")
    applicant = _make_node(base, "applicant", socks_port=free_port())
    handler = _make_node(base, "handler", socks_port=free_port())
    net = TorNet(base, authorities, relay, service, applicant, handler)
    try:
        for a in authorities:
            start_tor(
                a,
                _common(net, a.name, a.data_dir, a.control_port)
                + "\n".join(_relay_lines(a) + _authority_lines(a))
                + "\n",
                empty,
            )
        start_tor(
            relay,
            _common(net, relay.name, relay.data_dir, relay.control_port)
            + "\n".join([*_relay_lines(relay), "DirCache 0"])
            + "\n",
            empty,
        )
        for n in [*authorities, relay]:
            n.controller = _connect(n, deadline)
        # Clients started before the first consensus back off for 10-25 s: stage the start.
        first = authorities[0]
        controller = first.controller
        if controller is None:
            raise TorNetError("the first authority has no controller")
        _wait(
            "a consensus listing every relay", first, deadline, lambda: _consensus_size(controller) >= AUTHORITIES + 1
        )
        auth_dir = handler.data_dir / "onion-auth"
        auth_dir.mkdir(mode=0o700)
        start_tor(
            service,
            _common(net, "service", service.data_dir, service.control_port)
            + "\n".join(["SocksPort 0", *_onion_side(service)])
            + "\n",
            empty,
        )
        start_tor(
            applicant,
            _common(net, "applicant", applicant.data_dir, applicant.control_port)
            + "\n".join([f"SocksPort 127.0.0.1:{applicant.socks_port} ExtendedErrors", *_client_side(applicant)])
            + "\n",
            empty,
        )
        start_tor(
            handler,
            _common(net, "handler", handler.data_dir, handler.control_port)
            + "\n".join(
                [
                    f"SocksPort 127.0.0.1:{handler.socks_port} ExtendedErrors",
                    f"ClientOnionAuthDir {auth_dir}",
                    *_client_side(handler),
                ]
            )
            + "\n",
            empty,
        )
        for n in (service, applicant, handler):
            n.controller = _connect(n, deadline)
        for n in (service, applicant, handler):
            c = n.controller
            if c is None:
                raise TorNetError(f"{n.name} has no controller")
            _wait("bootstrap 100%", n, deadline, functools.partial(_bootstrapped, c))
    except BaseException:
        net.stop()
        raise
    net.bootstrap_seconds = time.monotonic() - started
    return net


@contextlib.contextmanager
def private_network(base: Path) -> Iterator[TorNet]:
    """The network, stopped at the end. One more try in a fresh folder if the first fails:
    ports are picked free but another process on the machine may take one before tor binds it."""
    try:
        net = build(base / "try1")
    except TorNetError:
        net = build(base / "try2")
    try:
        yield net
    finally:
        net.stop()
