"""A bounded flood against a running intake, from a process of its own: ``python -m tests.flood KIND URL SECONDS``.

Kinds (each what an adversary without solved proofs of work can send cheaply):

``bogus``     envelopes of random bytes (up to the largest bucket) with a real, unsolved challenge,
              and random challenge text, as fast as the server answers;
``unsolved``  well-formed, correctly signed contacts with a fresh challenge and a counter that does
              not solve it: the most expensive refusal (the server spends the nonce and runs Argon2id);
``replay``    the same spent challenges again and again;
``slow``      bodies that trickle (a byte every half second) on many connections: slowloris;
``uploads``   many parallel 1 MiB bodies: chunk uploads to made-up contacts and contact bodies.

It prints one JSON line: how many requests of each status it got. It never
solves a proof of work, so nothing it sends may be stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter

import aiohttp

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.errors import PowRejected

from .helpers import Org
from .intake_calls import Applicant, seal_for

CONNECTIONS = {"bogus": 8, "unsolved": 8, "replay": 8, "slow": 64, "uploads": 24}


class Flood:
    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.statuses: Counter[str] = Counter()
        self.spent: list[str] = []
        self.held: list[float] = []  # seconds a slow connection was kept before the server ended it
        org = Org()
        self.recipients = [org.intake[h].public_key for h in org.handler_ids]

    def going(self) -> bool:
        return time.monotonic() < self.deadline

    async def challenge(self, http: aiohttp.ClientSession) -> W.Challenge | None:
        async with http.post(self.url + "/api/v1/pow") as r:
            self.statuses[f"pow {r.status}"] += 1
            if r.status != 201:
                return None
            return W.Challenge.from_text((await r.json())["challenge"])

    async def post(self, http: aiohttp.ClientSession, data: bytes, headers: dict[str, str], what: str) -> None:
        url = self.url + "/api/v1/contacts?pool=general&attachments=0"
        async with http.post(url, data=data, headers=headers) as r:
            await r.read()
            self.statuses[f"{what} {r.status}"] += 1
            # A flood request that was accepted would be a hole in the test itself.
            assert r.status != 201, "a flood request was accepted"

    async def bogus(self, http: aiohttp.ClientSession) -> None:
        applicant = Applicant()
        while self.going():
            challenge = await self.challenge(http)
            size = int.from_bytes(os.urandom(3)) % E.BUCKETS[-1]
            pow_text = os.urandom(40).hex() + ".0" if challenge is None else f"{challenge.to_text()}.0"
            headers = applicant.submission_headers(os.urandom(size), "general", 0, pow_text)
            await self.post(http, os.urandom(size), headers, "bogus")

    def _unsolving_counter(self, challenge: W.Challenge) -> int:
        for counter in range(64):
            try:
                W.verify_work(W.CheckedChallenge(challenge), counter)
            except PowRejected:
                return counter
        raise AssertionError("64 counters in a row solve the challenge: difficulty too low for a flood")

    async def unsolved(self, http: aiohttp.ClientSession) -> None:
        applicant = Applicant()
        sealed = seal_for(self.recipients, applicant.contact(message="flood"))
        while self.going():
            challenge = await self.challenge(http)
            if challenge is None:
                continue
            pow_text = f"{challenge.to_text()}.{self._unsolving_counter(challenge)}"
            await self.post(
                http, sealed.data, applicant.submission_headers(sealed.data, "general", 0, pow_text), "unsolved"
            )
            self.spent.append(pow_text)

    async def replay(self, http: aiohttp.ClientSession) -> None:
        applicant = Applicant()
        sealed = seal_for(self.recipients, applicant.contact(message="replay"))
        headers = None
        while self.going():
            if headers is None:
                challenge = await self.challenge(http)
                if challenge is None:
                    continue
                pow_text = f"{challenge.to_text()}.{self._unsolving_counter(challenge)}"
                headers = applicant.submission_headers(sealed.data, "general", 0, pow_text)
            await self.post(http, sealed.data, headers, "replay")

    async def slow(self, http: aiohttp.ClientSession) -> None:
        """A real (unsolved) challenge, so the server gets as far as reading the body; then a byte at a time."""
        host, port = self.url.removeprefix("http://").split(":")
        applicant = Applicant()
        while self.going():
            challenge = await self.challenge(http)
            if challenge is None:
                await asyncio.sleep(0.5)
                continue
            headers = applicant.submission_headers(b"", "general", 0, f"{challenge.to_text()}.0")
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                self.statuses["slow connect refused"] += 1
                await asyncio.sleep(0.5)
                continue
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                b"POST /api/v1/contacts?pool=general&attachments=0 HTTP/1.1\r\nHost: x\r\n"
                + f"{head}Content-Length: 1000000\r\n\r\n".encode()
            )
            started = time.monotonic()
            try:
                while self.going() and not reader.at_eof():
                    writer.write(b"\x00")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        line = await asyncio.wait_for(reader.readline(), timeout=0.5)
                        if line:
                            self.statuses[f"slow {line.split(b' ')[1].decode()}"] += 1
                            self.held.append(time.monotonic() - started)
                            break
                else:
                    self.statuses["slow held to the end"] += 1
            except (OSError, IndexError, UnicodeDecodeError):
                self.statuses["slow dropped"] += 1
                self.held.append(time.monotonic() - started)
            finally:
                writer.close()

    async def uploads(self, http: aiohttp.ClientSession) -> None:
        frame = os.urandom(E.CHUNK_LEN)
        applicant = Applicant()
        n = 0
        while self.going():
            n += 1
            if n % 2:
                url = f"{self.url}/api/v1/contacts/{os.urandom(12).hex()}/attachments/0/chunks/0"
                headers = {"Safe-Passage-Upload": os.urandom(16).hex(), "Content-Type": "application/octet-stream"}
                async with http.put(url, data=frame, headers=headers) as r:
                    await r.read()
                    self.statuses[f"upload {r.status}"] += 1
            else:
                challenge = await self.challenge(http)
                if challenge is None:
                    continue
                headers = applicant.submission_headers(frame, "general", 0, f"{challenge.to_text()}.0")
                await self.post(http, frame, headers, "big")


async def main(kind: str, url: str, seconds: float) -> None:
    flood = Flood(url, seconds)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS[kind])
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker() -> None:
            while flood.going():
                try:
                    await getattr(flood, kind)(http)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    flood.statuses[f"{kind} {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS[kind])))
    report: dict[str, object] = dict(flood.statuses)
    if flood.held:
        report["slow held max s"] = round(max(flood.held), 1)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
