"""Webhook destinations: the address policy, the allow-list setting, redaction, and the
dispatcher connecting to the address it checked (real sockets, real TLS, real SQLite).

A resolver can be handed to the dispatcher (as a BLE backend is to the bridge): with one that
answers ``hooks.test`` — a name the system cannot resolve — a delivery that arrives proves the
connection went to the checked address, not to a second lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from wearemo.alerts import AlertDB, Dispatcher, RetryPolicy, RuleSpec
from wearemo.alerts.db import AlertRecord, Delivery, NewDelivery
from wearemo.alerts.destinations import (
    DestinationRefusedError,
    Resolver,
    WebhookAllowList,
    address_refusal,
    check_destination,
    destination_key,
    pin_destination,
    redact_url,
    system_resolve,
)
from wearemo.alerts.webhooks import REFUSED
from wearemo.settings import Settings

NONE = WebhookAllowList()

REFUSED_URLS = {
    "http://127.0.0.1/h": "loopback", "http://127.1/h": "loopback",
    "http://2130706433/h": "loopback", "http://0x7f.1/h": "loopback",
    "http://0177.0.0.1/h": "loopback", "http://0x7f.0x0.0x0.0x1/h": "loopback",
    "http://127.0.0.1./h": "loopback", "http://[::1]/h": "loopback",
    "http://[::ffff:127.0.0.1]/h": "loopback", "http://[2002:7f00:1::]/h": "loopback",
    "http://[64:ff9b::7f00:1]/h": "loopback",
    "http://localhost/h": "local host", "http://localhost./h": "local host",
    "http://Sub.LocalHost/h": "local host",
    "http://0.0.0.0/h": "unspecified", "http://0/h": "unspecified",
    "http://[::]/h": "unspecified",
    "http://169.254.169.254/h": "link-local", "http://[fe80::1]/h": "link-local",
    "http://[::ffff:169.254.169.254]/h": "link-local",
    "http://10.1.2.3/h": "private", "http://172.31.0.1/h": "private",
    "http://192.168.0.1/h": "private", "http://[fd00::1]/h": "private",
    "http://[fdff:ffff::1]/h": "private", "http://100.64.0.1/h": "carrier-grade NAT",
    "http://224.0.0.251/h": "multicast", "http://239.255.255.250/h": "multicast",
    "http://[ff02::1]/h": "multicast", "http://[fec0::1]/h": "site-local",
    "http://[64:ff9b:1::1]/h": "local-use NAT64",
    "http://240.0.0.1/h": "", "http://255.255.255.255/h": "", "http://192.0.2.1/h": "",
    "http://198.18.0.1/h": "", "http://[2001:db8::1]/h": "",
}


@pytest.mark.parametrize("url", sorted(REFUSED_URLS))
def test_non_public_destinations_are_refused_in_any_spelling(url: str) -> None:
    # through the same URL parsing a rule gets (pydantic normalises the IPv4 spellings)
    normalised = str(RuleSpec(kind="no_data", url=url).url)
    with pytest.raises(DestinationRefusedError, match="destination not allowed") as info:
        check_destination(normalised, NONE)
    assert REFUSED_URLS[url] in str(info.value)
    assert "WEAREMO_WEBHOOK_ALLOW" in str(info.value)
    with pytest.raises(DestinationRefusedError):  # the raw spelling too
        check_destination(url, NONE)


@pytest.mark.parametrize("url", ["https://hooks.example.org/h", "http://8.8.8.8:8080/h",
                                 "http://[2606:4700:4700::1111]/h", "https://xn--bcher-kva.ch/",
                                 "http://[::ffff:8.8.8.8]/h"])
def test_public_destinations_pass(url: str) -> None:
    check_destination(url, NONE)


def test_public_addresses_pass_the_address_policy() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2606:4700::1", "2a00:1450::1"]
    assert [address_refusal(ipaddress.ip_address(a)) for a in public] == [None] * 4


def test_allow_list_by_network_and_by_name() -> None:
    allow = WebhookAllowList.parse(["10.20.0.0/16", "127.0.0.1", "Hooks.Intranet."])
    check_destination("http://10.20.3.4/h", allow)
    check_destination("http://127.0.0.1:9000/h", allow)
    check_destination("http://[::ffff:127.0.0.1]/h", allow)  # the same address, mapped
    check_destination("http://hooks.intranet/h", allow)
    for url in ("http://10.21.0.1/h", "http://127.0.0.2/h", "http://[::1]/h",
                "http://localhost/h", "http://169.254.169.254/h"):
        with pytest.raises(DestinationRefusedError):
            check_destination(url, allow)
    with pytest.raises(ValueError, match="host bits"):
        WebhookAllowList.parse(["10.0.0.1/8"])
    with pytest.raises(ValueError, match="not a URL"):
        WebhookAllowList.parse(["http://hooks.intranet"])


async def test_allow_listed_name_may_resolve_inside_but_not_to_multicast() -> None:
    allow = WebhookAllowList.parse(["hooks.intranet"])

    async def inside(host: str, port: int) -> list[str]:
        return ["10.9.8.7"]

    async def multicast(host: str, port: int) -> list[str]:
        return ["224.0.0.1"]

    pinned = await pin_destination("http://hooks.intranet/h", allow, resolve=inside)
    assert str(pinned.address) == "10.9.8.7"
    with pytest.raises(DestinationRefusedError):
        await pin_destination("http://hooks.intranet/h", allow, resolve=multicast)
    with pytest.raises(DestinationRefusedError):  # another name resolving inside
        await pin_destination("http://other.intranet/h", allow, resolve=inside)


def test_allow_list_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAREMO_WEBHOOK_ALLOW", "10.0.0.0/8, hooks.intranet ,fd00::/8")
    assert Settings().webhook_allow == ("10.0.0.0/8", "hooks.intranet", "fd00::/8")
    assert WebhookAllowList.parse(Settings().webhook_allow).hosts == {"hooks.intranet"}
    for bad, why in (("10.0.0.1/8", "host bits"), ("http://x.org/h", "not a URL"),
                     ("bad host!", "neither")):
        monkeypatch.setenv("WEAREMO_WEBHOOK_ALLOW", bad)
        with pytest.raises(ValidationError, match=why):
            Settings()
    monkeypatch.delenv("WEAREMO_WEBHOOK_ALLOW")
    assert Settings().webhook_allow == ()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@h.example/a?token=s3&x=1#frag", "https://***@h.example/a?token=***&x=***#***"),
    ("https://token-only@h.example/a", "https://***@h.example/a"),
    ("https://h.example/a?bare-secret", "https://h.example/a?***"),
    ("https://h.example:8443/a/b", "https://h.example:8443/a/b"),
])
def test_redaction(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_destination_key_is_the_host() -> None:
    assert destination_key("http://Hooks.Example.org.:81/a") == "hooks.example.org"
    assert destination_key("http://[::1]:81/a") == "::1"


async def test_pinning_keeps_host_and_sni_with_the_system_resolver() -> None:
    allow = WebhookAllowList.parse(["localhost"])
    pinned = await pin_destination("https://u:p@localhost:8443/h?x=1", allow)
    assert pinned.address.is_loopback
    assert pinned.host_header == "localhost:8443" and pinned.sni_hostname == "localhost"
    host = f"[{pinned.address}]" if pinned.address.version == 6 else str(pinned.address)
    assert pinned.url == f"https://u:p@{host}:8443/h?x=1"
    assert "127.0.0.1" in await system_resolve("127.0.0.1", 80)


async def test_a_name_resolving_to_public_and_internal_addresses_is_refused() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "127.0.0.1"]

    with pytest.raises(DestinationRefusedError, match=r"resolves to 127\.0\.0\.1"):
        await pin_destination("http://hooks.example.org/h", NONE, resolve=rebinding)


# -- the dispatcher over real sockets ------------------------------------------------------


class _Hook:
    """A receiver recording the Host header and TLS server name of each request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.hosts.append(self.headers.get("Host", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: outer.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    @contextmanager
    def running(self) -> Iterator[_Hook]:
        t = threading.Thread(target=self.server.serve_forever, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def _enqueue(db: AlertDB, url: str) -> str:
    rule = db.add_rule("s1", RuleSpec(kind="no_data", url="https://hooks.example.invalid/h"),
                       "k" * 32, now_ns=0)
    alert = AlertRecord("a" * 32, rule.id, "s1", "no_data", 0, 0, "test", {}, None, None)
    db.record(rule.id, rule.track, [(alert, NewDelivery("alert.fired", url, b"{}"))], now_ns=0)
    [d] = db.due(2**62, limit=1)
    return d.id


@asynccontextmanager
async def _dispatching(dispatcher: Dispatcher) -> AsyncIterator[None]:
    task = asyncio.create_task(dispatcher.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _finished(db: AlertDB, timeout_s: float = 30.0) -> Delivery:
    async with asyncio.timeout(timeout_s):
        while True:
            [d] = await asyncio.to_thread(db.deliveries, "s1")
            if d.history:
                return d
            await asyncio.sleep(0.02)


def _resolver(answers: dict[str, list[str]]) -> tuple[Resolver, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[host]

    return resolve, asked


async def test_delivery_connects_to_the_checked_address_keeping_the_host() -> None:
    db = AlertDB(":memory:")
    with _Hook().running() as hook:
        _enqueue(db, f"http://hooks.test:{hook.port}/h")
        resolve, asked = _resolver({"hooks.test": ["127.0.0.1"]})
        policy = RetryPolicy(base_s=0.1, cap_s=0.1, max_attempts=1)
        dispatcher = Dispatcher(db, policy=policy, resolve=resolve,
                                allow=WebhookAllowList.parse(["127.0.0.1"]))
        async with _dispatching(dispatcher):
            d = await _finished(db)
    assert d.status == "delivered", d
    assert asked == ["hooks.test"]  # resolved once, by the check; httpx could not have
    assert hook.hosts == [f"hooks.test:{hook.port}"]


async def test_delivery_to_an_internal_answer_is_refused_before_connecting() -> None:
    db = AlertDB(":memory:")
    with _Hook().running() as hook:
        _enqueue(db, f"http://hooks.test:{hook.port}/h")
        resolve, _ = _resolver({"hooks.test": ["127.0.0.1"]})
        policy = RetryPolicy(base_s=0.1, cap_s=0.1, max_attempts=5)
        async with _dispatching(Dispatcher(db, policy=policy,
                                           resolve=resolve)):
            d = await _finished(db)
    assert (d.status, d.attempts, d.last_error, d.last_status_code) == (
        "failed", 1, REFUSED, None)
    assert hook.hosts == []


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and certificates for hooks.test and for another name (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=wearemo test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name in ("hooks.test", "elsewhere.test"):
        (d / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {"ca": d / "ca.pem", **{n: d / n for n in ("hooks.test", "elsewhere.test")}}


def _server_tls(files: dict[str, Path], name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{files[name]}.pem", f"{files[name]}.key")
    return ctx


@pytest.mark.parametrize(("served", "expect"), [("hooks.test", "delivered"),
                                                ("elsewhere.test", "pending")])
async def test_https_to_the_pinned_address_keeps_sni_and_checks_the_name(
        tls_files: dict[str, Path], served: str, expect: str) -> None:
    """The certificate is checked against the URL's name, not the pinned IP: the one for
    hooks.test is accepted, one for another name is refused (and retried)."""
    db = AlertDB(":memory:")
    with _Hook(_server_tls(tls_files, served)).running() as hook:
        _enqueue(db, f"https://hooks.test:{hook.port}/h")
        resolve, _ = _resolver({"hooks.test": ["127.0.0.1"]})
        trust = ssl.create_default_context(cafile=str(tls_files["ca"]))
        dispatcher = Dispatcher(db, policy=RetryPolicy(base_s=30, cap_s=30, max_attempts=3),
                                resolve=resolve, verify=trust,
                                allow=WebhookAllowList.parse(["127.0.0.1"]))
        async with _dispatching(dispatcher):
            d = await _finished(db)
    assert d.status == expect, d
    assert hook.server_names[:1] == ["hooks.test"]  # SNI names the host, not 127.0.0.1
    if expect == "delivered":
        assert hook.hosts == [f"hooks.test:{hook.port}"]
    else:
        assert hook.hosts == [] and "CERTIFICATE_VERIFY_FAILED" in (d.last_error or "")


def test_per_destination_scheduling_takes_other_hosts_first() -> None:
    db = AlertDB(":memory:")
    for i in range(5):
        _enqueue_at(db, "http://busy.example/h", i)
    _enqueue_at(db, "http://other.example/h", 10)
    due = db.due(2**62, limit=8, busy={"busy.example": 1}, per_destination=2)
    assert [d.dest for d in due] == ["busy.example", "other.example"]
    assert db.next_due_ns(exclude_dests=["busy.example"]) == 10
    assert db.next_due_ns(exclude=[d.id for d in due], exclude_dests=["busy.example"]) is None


def _enqueue_at(db: AlertDB, url: str, at_ns: int) -> None:
    rule = db.add_rule("s1", RuleSpec(kind="no_data", url="https://hooks.example.invalid/h"),
                       "k" * 32, now_ns=at_ns)
    alert = AlertRecord(f"{at_ns:032x}", rule.id, "s1", "no_data", at_ns, at_ns, "t", {}, None,
                        None)
    db.record(rule.id, rule.track, [(alert, NewDelivery("alert.fired", url, b"{}"))],
              now_ns=at_ns)


class _WatchedDB(AlertDB):
    """An outbox that says when the dispatcher last asked it for the next due time, which it
    does just before it waits."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.asked = threading.Event()

    def next_due_ns(self, **kw: Any) -> int | None:
        try:
            return super().next_due_ns(**kw)
        finally:
            self.asked.set()


@pytest.mark.parametrize("turns", range(5))
async def test_the_dispatcher_stops_when_cancelled_as_it_is_woken(turns: int) -> None:
    """Cancelling the dispatcher while a wake-up is on its way (an attempt just finished, or
    an alert was just queued) stops it: Python 3.11's wait_for dropped such a cancellation,
    and the app's shutdown then waited for ever. ``turns``: event-loop turns between the
    wake-up and the cancellation."""
    for _ in range(10):
        db = _WatchedDB()
        dispatcher = Dispatcher(db, policy=RetryPolicy(base_s=1, cap_s=1, max_attempts=1),
                                poll_s=30)
        task = asyncio.create_task(dispatcher.run())
        assert await asyncio.to_thread(db.asked.wait, 30)
        for _ in range(5):  # from the answer to its wait: a few turns of the loop
            await asyncio.sleep(0)
        dispatcher.wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, f"the dispatcher ignored its cancellation ({turns} turns after a wake-up)"
