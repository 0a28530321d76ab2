"""Tor costs on this machine: private-network bootstrap, onion publication, request latency, tor CPU/RAM.

Run with ``python -m bench.tor --runs 3`` (about 30-60 s a run). Each run
builds the private Tor network of the tests (tests/tornet.py) from nothing,
publishes an onion through server/tor.py (with the PoW defence on), and sends
requests through the applicant tor's SOCKS port with the client transport:
the first one (descriptor fetch, introduction, rendezvous) and warm ones on
the kept-alive connection. The baseline, measured in the same run and
interleaved, is the same request to the same server straight over loopback;
ratios are onion / loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from safepassage.client.errors import ServerUnreachable
from safepassage.client.transport import Transport
from safepassage.server import tor
from safepassage.server.tornet import private_network

WARM = 30


async def _site() -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/b/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _get(t: Transport) -> float:
    started = time.perf_counter()
    await t.call("GET", t.url("hello"), expect=(200,), want="json", limit=100)
    return time.perf_counter() - started


async def one_run(base: Path) -> dict[str, float]:
    started = time.monotonic()
    with private_network(base) as net:
        out = {"bootstrap_s": net.bootstrap_seconds}
        runner, port = await _site()
        spec = tor.public_spec(
            base / "onion.key", "127.0.0.1", port, pow_defense=True, queue_rate=250, queue_burst=2500
        )
        publisher = tor.OnionPublisher(tor.ControlTarget.parse(f"127.0.0.1:{net.service.control_port}").connect, [spec])
        try:
            t0 = time.monotonic()
            address = (await asyncio.to_thread(publisher.publish, await_publication=True))["public"].address
            out["publish_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            while True:  # the first request may need a retry while the descriptor spreads
                try:
                    async with Transport(f"http://{address}", "/b", socks=net.applicant.socks_url()) as onion:
                        await _get(onion)
                        out["first_request_s"] = time.monotonic() - t0
                        async with Transport(f"http://127.0.0.1:{port}", "/b") as direct:
                            await _get(direct)
                            onion_times, direct_times = [], []
                            for _ in range(WARM):
                                onion_times.append(await _get(onion))
                                direct_times.append(await _get(direct))
                    break
                except ServerUnreachable:
                    if time.monotonic() - t0 > 120:
                        raise
                    await asyncio.sleep(0.5)
            out["warm_onion_ms"] = statistics.median(onion_times) * 1000
            out["warm_loopback_ms"] = statistics.median(direct_times) * 1000
            out["ratio"] = statistics.median(o / d for o, d in zip(onion_times, direct_times, strict=True))
            out.update({f"tors_{k}": v for k, v in net.resources().items()})
            out["run_s"] = time.monotonic() - started
        finally:
            await asyncio.to_thread(publisher.close)
            await runner.cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-tor-") as tmp:
            result = asyncio.run(one_run(Path(tmp) / "net"))
        runs.append(result)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()), flush=True)
    print()
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
