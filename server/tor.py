"""All of the server's Tor handling, through stem: control connection, onion services, health.

Each server process (public intake, staff app, integration service) publishes
its own onion service through a tor it reaches on a control port or socket
(cookie or password authentication), or a private tor it launches for itself.
The onions are ephemeral (``ADD_ONION``), tied to our control connection: if
the process dies, tor takes the service down with it, so an address never
points at a port where nothing of ours is listening.

- The **public** onion turns on tor's proof-of-work defence (queue rate and
  burst configurable): under a flood, clients that pay more work are served
  first, before any request reaches aiohttp.
- The **staff** and **integration** onions use v3 client authorisation: the
  descriptor is encrypted to the listed x25519 client keys, so a client without
  one cannot even learn the introduction points. stem 1.8 takes a single
  client key, so ``ADD_ONION`` is sent raw, with one ``ClientAuthV3=`` per key.
  Tor cannot add a client to a running ephemeral service; a changed key set
  re-publishes the service (same key, same address; a second or two down).
- Onion keys live in 0600 files (umask 077, atomic writes) under ``DATA/keys``,
  so an address survives restarts. Deleting the file is how an address dies.
- A health check re-publishes after tor restarted or the control connection
  broke. stem's exceptions never leave this module: they become :class:`TorError`
  subclasses, whose messages carry no key material.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import stem
import stem.connection
import stem.control
import stem.response
from aiohttp import web

from safepassage.crypto import _primitives as P
from safepassage.crypto.errors import MalformedInput, SafePassageError
from safepassage.crypto.privatefile import read_private, write_private

log = logging.getLogger("safepassage.server.tor")
# stem sets its own logger to TRACE and logs every control message at that level, so any
# handler without a level of its own (basicConfig's, pytest's) would print "Sent to tor:
# ADD_ONION ED25519-V3:<onion secret key>". Only its warnings may pass.
logging.getLogger("stem").setLevel(logging.WARNING)

ROLES: Final = ("public", "staff", "integration")
KEY_TYPE: Final = "ED25519-V3"
#: Tor's expanded ed25519 secret key, base64: 64 bytes -> 88 characters.
_KEY_TEXT = re.compile(r"ED25519-V3:[A-Za-z0-9+/]{86}==")
_SERVICE_ID = re.compile(r"[a-z2-7]{56}")
#: A client authorisation public key: 32 bytes in base32 without padding.
_CLIENT_KEY = re.compile(r"[A-Z2-7]{52}")
#: tor's own file format for one authorised client (HiddenServiceDir/authorized_clients/*.auth).
_AUTH_LINE = re.compile(r"descriptor:x25519:([A-Za-z2-7]{52})")
#: Tor's defaults for the PoW queue (tor manual, HiddenServicePoWQueueRate/Burst).
DEFAULT_POW_QUEUE_RATE: Final = 250
DEFAULT_POW_QUEUE_BURST: Final = 2500
CONTROL_TIMEOUT: Final = 10.0
PUBLISH_TIMEOUT: Final = 120.0
#: At most this many authorised clients on one onion (tor's descriptor must stay under its size limit).
MAX_CLIENTS: Final = 200


class TorError(SafePassageError):
    """Tor could not be used."""

    hint = "Check that tor is running and that the server's tor_control setting names its control port or socket."
    exit_code = 4


class TorUnreachable(TorError):
    """Tor's control port or socket does not answer."""


class TorAuthFailed(TorError):
    """Tor refused the control connection's authentication."""

    hint = (
        "Give the server access to tor's control cookie (group debian-tor) or set "
        "tor_control_password_file to a 0600 file holding the control password."
    )


class OnionPublishFailed(TorError):
    """Tor refused to publish the onion service."""


class TorLaunchFailed(TorError):
    """The server could not start its own tor."""

    hint = "Check that the tor package is installed (apt-get install tor) and that DATA/tor is writable."


class InvalidClientKey(TorError):
    """That is not a Tor client authorisation key (52 base32 characters)."""

    hint = "Ask the handler or admin for the public key their client printed: safepassage handler onion-key."
    exit_code = 2


# --- keys ----------------------------------------------------------------------------------------


class OnionKey:
    """An onion service's secret key as tor hands it out (``ED25519-V3:<base64>``). Never printed."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        if not _KEY_TEXT.fullmatch(text):
            raise MalformedInput("onion key")
        self._text = text

    def reveal(self) -> str:
        """The ``ADD_ONION`` key argument; only for the control connection."""
        return self._text

    def __repr__(self) -> str:
        return "OnionKey(<secret>)"

    @classmethod
    def load(cls, path: Path) -> OnionKey | None:
        """The key in ``path``, or None if there is none yet; a readable-by-others file is refused."""
        try:
            raw = read_private(path, max_len=256, what="the onion key file")
        except FileNotFoundError:
            return None
        try:
            return cls(raw.decode("ascii").strip())
        except UnicodeDecodeError:
            raise MalformedInput("onion key file") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, (self._text + "\n").encode("ascii"), replace=True)

    @classmethod
    def create(cls, path: Path) -> OnionKey:
        """A new key saved at ``path``, which must not exist yet (FileExistsError)."""
        key = cls.generate()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, (key._text + "\n").encode("ascii"), replace=False)
        return key

    @classmethod
    def generate(cls) -> OnionKey:
        """A new key made here, not by tor: its address is known before any publication."""
        expanded = P.ed25519_expanded_from_seed(P.random_bytes(P.ED25519_SEED_LEN))
        return cls(f"{KEY_TYPE}:{base64.b64encode(expanded).decode('ascii')}")

    def service_id(self) -> str:
        """The 56-letter onion name of this key (rend-spec-v3: key, checksum, version 3)."""
        public = P.ed25519_public_from_expanded(base64.b64decode(self._text.split(":", 1)[1]))
        checksum = P.sha3_256(b".onion checksum", public, b"\x03")[:2]
        return base64.b32encode(public + checksum + b"\x03").decode("ascii").lower()

    def address(self) -> str:
        return self.service_id() + ".onion"


@dataclass(frozen=True, slots=True, order=True)
class ClientKey:
    """A client's x25519 public key for v3 client authorisation, base32 (upper case, no padding)."""

    base32: str

    @classmethod
    def parse(cls, text: str) -> ClientKey:
        """Accepts the bare key or tor's ``descriptor:x25519:<key>`` line; any case."""
        text = text.strip()
        match = _AUTH_LINE.fullmatch(text)
        value = (match.group(1) if match else text).upper().rstrip("=")
        if not _CLIENT_KEY.fullmatch(value):
            raise InvalidClientKey()
        try:
            raw = base64.b32decode(value + "====")
        except binascii.Error:
            raise InvalidClientKey() from None
        # Canonical only: the last character carries one bit, the other four must be zero.
        if len(raw) != 32 or base64.b32encode(raw).decode("ascii").rstrip("=") != value:
            raise InvalidClientKey()
        return cls(value)

    def auth_line(self) -> str:
        return f"descriptor:x25519:{self.base32}"


def read_client_keys(folder: Path) -> dict[str, ClientKey]:
    """The authorised clients in ``folder``: ``<name>.auth`` files in tor's format, one key each.

    A malformed file is skipped with a log line naming the file (never its
    content): one bad file must not take the onion away from everybody else.
    """
    out: dict[str, ClientKey] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.auth")):
        try:
            out[path.stem] = ClientKey.parse(read_private(path, max_len=256, what="a client key file").decode("ascii"))
        except (SafePassageError, UnicodeDecodeError):
            log.error("ignoring malformed client key file %s", path.name)
    return out


def write_client_key(folder: Path, name: str, key: ClientKey) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{name}.auth"
    write_private(path, (key.auth_line() + "\n").encode("ascii"), replace=True)
    return path


def remove_client_key(folder: Path, name: str) -> bool:
    try:
        (folder / f"{name}.auth").unlink()
    except FileNotFoundError:
        return False
    return True


# --- what to publish -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnionSpec:
    """One onion service: where its key lives, what it forwards to, how it is defended."""

    role: str
    key_path: Path
    target_host: str
    target_port: int
    virtual_port: int = 80
    pow_defense: bool = False
    pow_queue_rate: int = DEFAULT_POW_QUEUE_RATE
    pow_queue_burst: int = DEFAULT_POW_QUEUE_BURST
    #: None: anyone may connect. A tuple (even empty): only those clients may.
    client_keys: tuple[ClientKey, ...] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown onion role {self.role!r}")
        if not (1 <= self.target_port <= 65535 and 1 <= self.virtual_port <= 65535):
            raise ValueError("port out of range")
        if self.pow_queue_rate < 1 or self.pow_queue_burst < self.pow_queue_rate:
            raise ValueError("PoW queue burst must be at least the rate, and the rate positive")
        if self.client_keys is not None and len(self.client_keys) > MAX_CLIENTS:
            raise ValueError(f"at most {MAX_CLIENTS} authorised clients per onion")

    def command(self, key: OnionKey | None) -> str:
        """The raw ``ADD_ONION`` line (stem 1.8 has no PoW arguments and only one client key)."""
        parts = ["ADD_ONION", key.reveal() if key else f"NEW:{KEY_TYPE}"]
        if self.client_keys is not None:
            parts.append("Flags=V3Auth")
        parts.append(f"Port={self.virtual_port},{self.target_host}:{self.target_port}")
        if self.pow_defense:
            parts += [
                "PoWDefensesEnabled=1",
                f"PoWQueueRate={self.pow_queue_rate}",
                f"PoWQueueBurst={self.pow_queue_burst}",
            ]
        parts += [f"ClientAuthV3={k.base32}" for k in sorted(set(self.client_keys or ()))]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Published:
    role: str
    service_id: str

    @property
    def address(self) -> str:
        return f"{self.service_id}.onion"


# --- control connection --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlTarget:
    """``host:port`` on loopback, or ``unix:/path/to/socket``; plus an optional password file."""

    host: str = ""
    port: int = 0
    socket_path: str = ""
    password_file: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str, password_file: str = "") -> ControlTarget:
        if text.startswith("unix:"):
            path = text[5:]
            if not path.startswith("/"):
                raise TorError("tor_control unix: needs an absolute socket path")
            return cls(socket_path=path, password_file=password_file)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise TorError("tor_control must be host:port or unix:/path")
        # The control port can publish and remove our onions: never across a network.
        if host not in ("127.0.0.1", "::1", "[::1]", "localhost"):
            raise TorError("tor_control must be on loopback (127.0.0.1) or a unix socket")
        return cls(host=host.strip("[]"), port=int(port), password_file=password_file)

    def password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            raw = read_private(Path(self.password_file), max_len=1024, what="the tor control password file")
        except FileNotFoundError:
            raise TorAuthFailed("the control password file does not exist") from None
        return raw.decode("utf-8", errors="strict").strip()

    def connect(self) -> stem.control.Controller:
        try:
            if self.socket_path:
                controller = stem.control.Controller.from_socket_file(self.socket_path)
            else:
                controller = stem.control.Controller.from_port(self.host, self.port)
        except stem.SocketError:
            raise TorUnreachable(self.socket_path or f"{self.host}:{self.port}") from None
        try:
            stem.connection.authenticate(controller, password=self.password())
        except stem.connection.MissingPassword:
            controller.close()
            raise TorAuthFailed("tor wants a password: set tor_control_password_file") from None
        except (stem.connection.AuthenticationFailure, UnicodeDecodeError):
            controller.close()
            raise TorAuthFailed() from None
        return controller


Connect = Callable[[], stem.control.Controller]
TorOptions = Mapping[str, str | list[str]]


class LaunchedTor:
    """A tor this process started: its control socket, and its process to stop.

    The first controller of a tor whose ``__OwningControllerProcess`` is this
    process takes ownership (stem sends TAKEOWNERSHIP): tor exits when that
    connection closes. So the controller that watched the bootstrap is handed
    to the publisher as its first connection, never closed in between.
    """

    def __init__(self, target: ControlTarget, process: subprocess.Popen[bytes]) -> None:
        self.target = target
        self.process = process
        self.first: stem.control.Controller | None = None

    def connect(self) -> stem.control.Controller:
        if self.first is not None:
            first, self.first = self.first, None
            if first.is_alive():
                return first
        return self.target.connect()

    def stop(self) -> None:
        if self.first is not None:
            with contextlib.suppress(Exception):
                self.first.close()
            self.first = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def launch(data_dir: Path, options: TorOptions | None = None) -> LaunchedTor:
    """Start a private tor for this process (data under ``data_dir``, control socket only).

    Its owner is this process (``__OwningControllerProcess``; stem's first
    controller then sends TAKEOWNERSHIP): it exits when the process does, or
    when that controller closes. ``options`` add torrc lines (a test network's,
    or bridges); ``SocksPort`` stays off, the server does not browse.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    control = data_dir / "control"
    config: dict[str, str | list[str]] = {
        "DataDirectory": str(data_dir),
        "ControlPort": f"unix:{control}",
        "CookieAuthentication": "1",
        "SocksPort": "0",
        "SafeLogging": "1",
        "Log": f"notice file {data_dir / 'notice.log'}",
        "__OwningControllerProcess": str(os.getpid()),
        **(options or {}),
    }
    torrc = data_dir / "torrc"
    lines = []
    for name, value in config.items():
        for one in [value] if isinstance(value, str) else value:
            if "\n" in one or "\n" in name:
                raise TorLaunchFailed("a tor option contains a line break")
            lines.append(f"{name} {one}")
    torrc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    binary = shutil.which("tor") or "/usr/sbin/tor"
    try:
        # Our torrc only: no system defaults file may add a SocksPort or another DataDirectory.
        process = subprocess.Popen(  # noqa: S603 (fixed binary, arguments are our own paths)
            [binary, "-f", str(torrc), "--defaults-torrc", os.devnull],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise TorLaunchFailed(type(exc).__name__) from None
    launched = LaunchedTor(ControlTarget(socket_path=str(control)), process)
    try:
        _wait_bootstrapped(launched, data_dir / "notice.log")
    except BaseException:
        launched.stop()
        raise
    return launched


def _wait_bootstrapped(launched: LaunchedTor, log_file: Path) -> None:
    """Wait (bounded) until the new tor answers on its control socket and has bootstrapped."""
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while True:
        if launched.process.poll() is not None:
            log.error("tor exited at start; see %s", log_file)
            raise TorLaunchFailed(f"tor exited with status {launched.process.returncode}")
        if time.monotonic() > deadline:
            raise TorLaunchFailed("tor did not bootstrap in time")
        if launched.first is None:
            with contextlib.suppress(TorUnreachable):
                launched.first = launched.target.connect()
        if launched.first is not None:
            with contextlib.suppress(stem.ControllerError, stem.SocketError):
                if "PROGRESS=100" in launched.first.get_info("status/bootstrap-phase", ""):
                    return
        # Polling tor's own state; there is no event to wait on before the control socket exists.
        time.sleep(0.25)


# --- publishing ----------------------------------------------------------------------------------


class OnionPublisher:
    """Keeps a set of onion services published through one tor, across tor restarts and rotations.

    Each role's current key is published, and with it, during a rotation, the
    next key (``onion-<role>.next.key``) and retired keys still in their grace
    period (``onion-<role>.retired-<unix expiry>.key``); a retired key past its
    expiry is destroyed. Blocking (stem is synchronous): call it from a thread,
    as :func:`onion_context` does.
    """

    def __init__(self, connect: Callable[[], stem.control.Controller], specs: Iterable[OnionSpec]) -> None:
        self._connect = connect
        self._specs = {s.role: s for s in specs}
        self._controller: stem.control.Controller | None = None
        #: label (role, or role.next, role.retired-T) -> what tor has for it
        self._published: dict[str, Published] = {}
        self._lock = threading.Lock()

    @property
    def published(self) -> dict[str, Published]:
        return dict(self._published)

    def address(self, role: str) -> str:
        """The address of ``role``'s current key (published, or waiting for its first client key)."""
        if role in self._published:
            return self._published[role].address
        key = OnionKey.load(self._specs[role].key_path)
        if key is None:
            raise KeyError(role)
        return key.address()

    def _ensure_controller(self) -> stem.control.Controller:
        if self._controller is None or not self._controller.is_alive():
            if self._controller is not None:
                with contextlib.suppress(Exception):
                    self._controller.close()
            self._controller = self._connect()
            self._published.clear()
        return self._controller

    def _instances(self) -> dict[str, tuple[OnionSpec, OnionKey]]:
        out: dict[str, tuple[OnionSpec, OnionKey]] = {}
        for role, spec in self._specs.items():
            if spec.client_keys == ():
                # tor refuses a client-authorised service with no client ("No auth clients
                # specified"); nobody could reach it anyway. It comes up with the first key.
                continue
            key = OnionKey.load(spec.key_path)
            if key is None:
                key = OnionKey.generate()
                key.save(spec.key_path)
            out[role] = (spec, key)
            for label, path in rotation_keys(spec.key_path, time.time()).items():
                extra = OnionKey.load(path)
                if extra is not None:
                    out[f"{role}.{label}"] = (replace(spec, key_path=path), extra)
        return out

    def _add(
        self, controller: stem.control.Controller, spec: OnionSpec, key: OnionKey, *, await_publication: bool
    ) -> Published:
        service_id = key.service_id()
        uploaded = threading.Event()

        def on_desc(event: Any) -> None:
            if event.action == stem.HSDescAction.UPLOADED and event.address == service_id:
                uploaded.set()

        if await_publication:
            controller.add_event_listener(on_desc, stem.control.EventType.HS_DESC)
        try:
            try:
                reply = controller.msg(spec.command(key))
                stem.response.convert("ADD_ONION", reply)
            except (stem.ControllerError, stem.ProtocolError) as exc:
                # tor's own reason names an option, never the key (we do not echo the command).
                raise OnionPublishFailed(_reason(exc)) from None
            except stem.SocketError:
                raise TorUnreachable("the control connection closed") from None
            if reply.service_id != service_id:
                raise OnionPublishFailed("tor published another address than the key's")
            if await_publication and not uploaded.wait(PUBLISH_TIMEOUT):
                raise OnionPublishFailed("the descriptor was not uploaded in time")
        finally:
            if await_publication:
                with contextlib.suppress(Exception):
                    controller.remove_event_listener(on_desc)
        return Published(spec.role, service_id)

    def _reconcile(self, *, await_publication: bool) -> bool:
        """Bring tor in line with the key files; True if anything was added or removed."""
        controller = self._ensure_controller()
        current = _current_onions(controller)
        by_id = {p.service_id: p for p in self._published.values() if p.service_id in current}
        wanted = self._instances()
        changed = False
        published: dict[str, Published] = {}
        for label, (spec, key) in wanted.items():
            done = by_id.get(key.service_id())
            if done is None:
                done = self._add(controller, spec, key, await_publication=await_publication)
                # Onion addresses are public (they go into the signed directory); the operator needs them.
                log.info("onion service %s published at %s", label, done.address)
                changed = True
            published[label] = done
        keep = {p.service_id for p in published.values()}
        for p in self._published.values():
            if p.service_id not in keep:
                with contextlib.suppress(stem.ControllerError, stem.SocketError):
                    controller.remove_ephemeral_hidden_service(p.service_id)
                log.info("onion service %s taken down", p.address)
                changed = True
        self._published = published
        return changed

    def publish(self, *, await_publication: bool = False) -> dict[str, Published]:
        """Publish every service not already up on the current tor; take down retired ones."""
        with self._lock:
            self._reconcile(await_publication=await_publication)
            return dict(self._published)

    def healthy(self) -> bool:
        """True if the control connection is up and tor still has every one of our services."""
        with self._lock:
            controller = self._controller
            if controller is None or not controller.is_alive():
                return False
            try:
                current = _current_onions(controller)
            except TorError:
                return False
            return all(p.service_id in current for p in self._published.values())

    def check(self) -> bool:
        """Health check: re-connect and re-publish if needed, follow rotations. True if something changed."""
        if not self.healthy():
            log.warning("tor lost our onion services or the control connection; publishing again")
        with self._lock:
            return self._reconcile(await_publication=False)

    def _drop_role(self, role: str) -> None:
        for label in [lb for lb, p in self._published.items() if p.role == role]:
            done = self._published.pop(label)
            if self._controller is not None:
                with contextlib.suppress(stem.ControllerError, stem.SocketError):
                    self._controller.remove_ephemeral_hidden_service(done.service_id)

    def set_clients(self, role: str, keys: Iterable[ClientKey]) -> bool:
        """Change the authorised clients of ``role``; re-publishes only if the set changed."""
        wanted = tuple(sorted(set(keys)))
        with self._lock:
            spec = self._specs[role]
            if spec.client_keys is None:
                raise ValueError(f"the {role} onion has no client authorisation")
            if wanted == spec.client_keys:
                return False
            self._specs[role] = replace(spec, client_keys=wanted)
            # Tor cannot change the clients of a running service: take it down and publish it again.
            self._drop_role(role)
            log.info("authorised clients of the %s onion changed; publishing it again", role)
            self._reconcile(await_publication=False)
        return True

    def preset_clients(self, role: str, keys: Iterable[ClientKey]) -> None:
        """Set the authorised clients before the first publication (no re-publication)."""
        with self._lock:
            spec = self._specs[role]
            if spec.client_keys is None:
                raise ValueError(f"the {role} onion has no client authorisation")
            self._specs[role] = replace(spec, client_keys=tuple(sorted(set(keys))))

    def client_keys(self, role: str) -> tuple[ClientKey, ...] | None:
        return self._specs[role].client_keys

    def close(self) -> None:
        """Take our services down and close the control connection."""
        with self._lock:
            controller, self._controller = self._controller, None
            if controller is None:
                return
            for p in self._published.values():
                with contextlib.suppress(stem.ControllerError, stem.SocketError):
                    controller.remove_ephemeral_hidden_service(p.service_id)
            self._published.clear()
            with contextlib.suppress(Exception):
                controller.close()


# --- rotation ------------------------------------------------------------------------------------

_RETIRED = re.compile(r"retired-(\d{1,12})")


class NoOnionKey(TorError):
    """This role has no onion key yet."""

    hint = (
        "Run 'server onion-address --role ROLE --create' to make it now (its address is known at once, "
        "for the admins' first directory), or start the service once with tor_control set."
    )
    exit_code = 2


class RotationError(TorError):
    """The onion address cannot be rotated in that state."""

    hint = "Start a rotation with 'server onion-rotate', have the admins sign the new address, then finish it."
    exit_code = 2


def _stem(key_path: Path) -> str:
    return key_path.name.removesuffix(".key")


def next_key_path(key_path: Path) -> Path:
    return key_path.with_name(_stem(key_path) + ".next.key")


def rotation_keys(key_path: Path, now: float) -> dict[str, Path]:
    """``next`` and ``retired-T`` key files beside ``key_path``; retired ones past ``T`` are destroyed."""
    out: dict[str, Path] = {}
    nxt = next_key_path(key_path)
    if nxt.exists():
        out["next"] = nxt
    for path in sorted(key_path.parent.glob(_stem(key_path) + ".retired-*.key")):
        match = _RETIRED.fullmatch(path.name.removesuffix(".key").rsplit(".", 1)[-1])
        if match is None:
            continue
        if int(match.group(1)) <= now:
            # The grace period is over: the old address must die, and with it the key that could revive it.
            path.unlink(missing_ok=True)
            log.info("retired onion key %s destroyed", path.name)
            continue
        out[match.group(0)] = path
    return out


def start_rotation(key_path: Path) -> OnionKey:
    """Make the next key (published beside the current one from the next health check on)."""
    if OnionKey.load(key_path) is None:
        raise RotationError("there is no current onion key to rotate from")
    if next_key_path(key_path).exists():
        raise RotationError("a rotation is already under way (a next key exists)")
    key = OnionKey.generate()
    path = next_key_path(key_path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, (key.reveal() + "\n").encode("ascii"), replace=False)
    return key


def finish_rotation(key_path: Path, *, grace_seconds: int, now: float) -> tuple[str, str]:
    """The next key becomes current; the old one stays up ``grace_seconds`` more. Returns (old, new) addresses."""
    current, nxt = OnionKey.load(key_path), OnionKey.load(next_key_path(key_path))
    if current is None or nxt is None:
        raise RotationError("no rotation under way (there is no next key)")
    if not 0 <= grace_seconds <= 366 * 86400:
        raise RotationError("the grace period must be 0 to 366 days")
    retired = key_path.with_name(f"{_stem(key_path)}.retired-{int(now) + grace_seconds}.key")
    # Two renames in the same folder: at every moment each key is in exactly one file.
    os.rename(key_path, retired)
    os.rename(next_key_path(key_path), key_path)
    return current.address(), nxt.address()


def onion_addresses(key_path: Path, now: float) -> dict[str, str]:
    """Every address of a role's key files (``current``, ``next``, ``retired-T``), without tor."""
    out: dict[str, str] = {}
    key = OnionKey.load(key_path)
    if key is not None:
        out["current"] = key.address()
    for label, path in rotation_keys(key_path, now).items():
        extra = OnionKey.load(path)
        if extra is not None:
            out[label] = extra.address()
    return out


def _current_onions(controller: stem.control.Controller) -> set[str]:
    try:
        return set(controller.get_info("onions/current", "").split())
    except stem.SocketError:
        raise TorUnreachable("the control connection closed") from None
    except stem.ControllerError as exc:
        raise TorError(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    # tor's reply text ("Invalid key type", "Unrecognized option"), cut short; never our command line.
    text = " ".join(str(exc).split())[:120]
    return re.sub(r"ED25519-V3:\S+", "<key>", text)


# --- aiohttp wiring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TorSettings:
    """What a process needs to publish its onion: from ServerConfig / IntegrationConfig."""

    control: str
    password_file: str
    data_dir: Path
    health_seconds: int = 30


ClientSource = Callable[[], Awaitable[tuple[ClientKey, ...]]]


def onion_context(
    publisher: OnionPublisher,
    *,
    health_seconds: int,
    clients: Mapping[str, ClientSource] | None = None,
    on_published: Callable[[dict[str, Published]], None] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry: publish at start, check health and client keys, take down at stop.

    ``clients`` maps a role to a coroutine giving its current authorised keys
    (read from the enrolment records); a change re-publishes that onion.
    """

    async def sync_clients() -> None:
        for role, source in (clients or {}).items():
            keys = await source()
            await asyncio.to_thread(publisher.set_clients, role, keys)

    async def loop() -> None:
        while True:
            await asyncio.sleep(health_seconds)
            try:
                await sync_clients()
                await asyncio.to_thread(publisher.check)
            except TorError as exc:
                # Logged and retried next round: tor may be restarting.
                log.error("tor health check failed: %s", exc.message)
            except Exception as exc:
                # Anything else (a database error reading the client keys, an OSError) must not
                # end the task, or the onion is never checked again. Only the type is logged:
                # a foreign message could quote key material.
                log.error("tor health check failed: %s", type(exc).__name__)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        for role, source in (clients or {}).items():
            keys = await source()
            # Before the first publication, so the service comes up with the right clients at once.
            publisher.preset_clients(role, keys)
        published = await asyncio.to_thread(publisher.publish)
        if on_published is not None:
            on_published(published)
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(publisher.close)
            if on_close is not None:
                await asyncio.to_thread(on_close)

    return ctx


#: The running publisher of an app, for the addresses it got (tests, status pages).
ONIONS: Final = web.AppKey("onions", OnionPublisher)


def attach(
    app: web.Application,
    settings: TorSettings,
    specs: Iterable[OnionSpec],
    *,
    clients: Mapping[str, ClientSource] | None = None,
    launch_options: TorOptions | None = None,
) -> OnionPublisher:
    """Publish ``specs`` for as long as ``app`` runs (connecting or launching tor at start-up)."""

    target = None if settings.control == "launch" else ControlTarget.parse(settings.control, settings.password_file)
    launched: list[LaunchedTor] = []

    def connect() -> stem.control.Controller:
        if target is not None:
            return target.connect()
        # Launched lazily, on the first connect (the app may be built and never started);
        # if that tor died, the next health check launches a new one.
        if launched and launched[0].process.poll() is not None:
            launched.clear()
        if not launched:
            launched.append(launch(settings.data_dir / "tor", launch_options))
        return launched[0].connect()

    def stop_launched() -> None:
        for t in launched:
            t.stop()
        launched.clear()

    publisher = OnionPublisher(connect, specs)
    app[ONIONS] = publisher
    app.cleanup_ctx.append(
        onion_context(publisher, health_seconds=settings.health_seconds, clients=clients, on_close=stop_launched)
    )
    return publisher


def public_spec(
    key_path: Path, host: str, port: int, *, pow_defense: bool, queue_rate: int, queue_burst: int
) -> OnionSpec:
    """The applicants' onion: anyone may connect; PoW defence against floods."""
    return OnionSpec(
        "public",
        key_path,
        host,
        port,
        pow_defense=pow_defense,
        pow_queue_rate=queue_rate,
        pow_queue_burst=queue_burst,
    )


def restricted_spec(role: str, key_path: Path, host: str, port: int) -> OnionSpec:
    """The staff or integration onion: only listed clients (none until the first is enrolled)."""
    return OnionSpec(role, key_path, host, port, client_keys=())


def validate_control(text: str) -> None:
    """Raise TorError if ``tor_control`` is not empty, ``launch``, ``host:port`` or ``unix:/path``."""
    if text and text != "launch":
        ControlTarget.parse(text)


__all__ = [
    "ClientKey",
    "ControlTarget",
    "InvalidClientKey",
    "OnionKey",
    "OnionPublishFailed",
    "OnionPublisher",
    "OnionSpec",
    "Published",
    "ROLES",
    "RotationError",
    "finish_rotation",
    "next_key_path",
    "onion_addresses",
    "rotation_keys",
    "start_rotation",
    "TorAuthFailed",
    "TorError",
    "TorLaunchFailed",
    "TorSettings",
    "TorUnreachable",
    "ONIONS",
    "attach",
    "public_spec",
    "restricted_spec",
    "LaunchedTor",
    "launch",
    "onion_context",
    "read_client_keys",
    "remove_client_key",
    "validate_control",
    "write_client_key",
]
