"""Memory while a 500 MB attachment goes up (applicant client) and comes down (handler client).

Run with ``make bench`` (or ``python -m bench.attachment``). The intake and the
staff app run as ``safepassage server run`` and ``staff run``; the applicant
sends with ``safepassage contact send --attach`` and the handler reads with
``safepassage handler read``, each in a process of its own. Measured:

* each server process: resident memory before (the baseline) and its peak
  while the attachment passes through it (sampled every 50 ms);
* each client process: its peak resident memory (the kernel's high-water
  mark), against the same command with a 1 KB attachment (the baseline).

Target: growth <= 64 MB on both sides. The server's per-contact size limit is
raised for this run (the default, 500,000,000 bytes on the wire, is just under
what 500 MB of plaintext takes once sealed in 1 MiB chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyotp
from sqlalchemy import select, update

from safepassage.client.handler import login
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Contact
from tests.durability import World
from tests.handler_env import PASSPHRASE, PASSWORD

EXE = str(Path(sys.executable).with_name("safepassage"))
MIB = 1024 * 1024
#: Peak memory growth allowed on each side for a 500 MB attachment (issue 8).
GROWTH_TARGET_MIB = 64


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Peak(threading.Thread):
    """Samples a process's resident memory until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.before, self.peak = pid, _rss(pid), _rss(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.05)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak - self.before


def _client_peak_mib(args: list[str], env: dict[str, str], stdin: bytes = b"") -> float:
    """Peak RSS of one client command, run through a small wrapper that reports its child's high-water mark."""
    wrapper = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), capture_output=True); "
        "sys.stderr.buffer.write(r.stderr[-2000:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
    )
    out = subprocess.run(  # noqa: S603 - our own commands
        [sys.executable, "-c", wrapper, *args], input=stdin, capture_output=True, env=env, check=False
    )
    peak_kib, code = out.stdout.decode().split()
    if code != "0":
        raise RuntimeError(f"{args[:3]} failed: {out.stderr.decode(errors='replace')}")
    return int(peak_kib) / 1024


def _pid(proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        raise RuntimeError("the service is not running")
    return proc.pid


def _write_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(os.urandom(n))
            left -= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=500_000_000, help="attachment size in bytes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = World(root, "", "")
        raised = {"SAFEPASSAGE_MAX_CONTACT_BYTES": str(2 * args.size)}
        world.intake.env.update(raised)
        try:
            results = asyncio.run(_run(world, root, args.size))
        finally:
            world.intake.stop()
            world.staff.stop()
    _report(args.size, results)


async def _run(world: World, root: Path, size: int) -> dict[str, float]:
    intake, staff = world.intake, world.staff
    intake.start()
    staff.start()
    secret = await world.enrol_dana()
    await world.list_dana()
    for service in (intake, staff):
        service.stop()
        service.start()
    await login(world.paths, password=PASSWORD, code=pyotp.TOTP(secret).at(int(time.time()) + 30))
    passphrase_file = root / "dana" / "passphrase"
    passphrase_file.write_text(str(PASSPHRASE))
    passphrase_file.chmod(0o600)
    message = root / "message.txt"
    message.write_text("an attachment for the benchmark")
    small, big = root / "small.bin", root / "big.bin"
    _write_file(small, 1000)
    _write_file(big, size)
    fp = world.org.admin_set.fingerprint()
    env = dict(os.environ)
    results: dict[str, float] = {}
    for label, path in (("small", small), ("big", big)):
        send = [EXE, "contact", "send", "--server", intake.url, "--org", fp, "--pool", "general"]
        send += ["--attach", str(path), "--message-file", str(message)]
        known = await _cases(world)
        watch = Peak(_pid(intake.proc))
        watch.start()
        started = time.perf_counter()
        results[f"applicant {label}"] = await asyncio.to_thread(_client_peak_mib, send, env)
        results[f"upload s {label}"] = time.perf_counter() - started
        results[f"intake growth {label}"] = watch.stop()
        case = await _route_new_case(world, known)
        out = root / f"read-{label}"
        read = [EXE, "handler", "read", case, "--out", str(out), "--vault", str(world.paths.vault)]
        read += ["--passphrase-file", str(passphrase_file)]
        watch = Peak(_pid(staff.proc))
        watch.start()
        started = time.perf_counter()
        results[f"handler {label}"] = await asyncio.to_thread(_client_peak_mib, read, env)
        results[f"download s {label}"] = time.perf_counter() - started
        results[f"staff growth {label}"] = watch.stop()
        got = next(p for p in out.iterdir() if p.is_file())
        if got.stat().st_size != path.stat().st_size:
            raise RuntimeError("the handler did not get the whole attachment")
    return results


async def _cases(world: World, route: str | None = None) -> set[str]:
    store = Store(make_engine(world.url))
    try:
        async with store.write() as session:
            if route is not None:
                await session.execute(update(Contact).where(Contact.id == route).values(owner="dana"))
            return set((await session.scalars(select(Contact.id))).all())
    finally:
        await store.close()


async def _route_new_case(world: World, known: set[str]) -> str:
    """The case just sent, given to dana (the handler whose client reads it)."""
    [case] = await _cases(world) - known
    await _cases(world, route=case)
    return case


def _report(size: int, r: dict[str, float]) -> None:
    def verdict(v: float) -> str:
        return f"target <= {GROWTH_TARGET_MIB} MiB: " + ("met" if v <= GROWTH_TARGET_MIB else "MISSED")

    up = r["applicant big"] - r["applicant small"]
    down = r["handler big"] - r["handler small"]
    print(f"attachment {size / 1e6:.0f} MB: upload {r['upload s big']:.0f} s, download {r['download s big']:.0f} s")
    print(f"intake server growth during upload:  {r['intake growth big']:.1f} MiB ({verdict(r['intake growth big'])})")
    print(f"staff server growth during download: {r['staff growth big']:.1f} MiB ({verdict(r['staff growth big'])})")
    print(
        f"applicant client peak {r['applicant big']:.0f} MiB vs {r['applicant small']:.0f} MiB with 1 KB: "
        f"growth {up:.1f} MiB ({verdict(up)})"
    )
    print(
        f"handler client peak {r['handler big']:.0f} MiB vs {r['handler small']:.0f} MiB with 1 KB: "
        f"growth {down:.1f} MiB ({verdict(down)})"
    )


if __name__ == "__main__":
    main()
