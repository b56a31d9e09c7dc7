"""The DNS resolver against hostile and broken answers: huge MX sets, odd exchange names, CNAME
chains and loops, silent, truncating and lying nameservers.

Two servers, both on 127.0.0.1 only: dnsmasq (``tests/dnsserver.py``) for what a real server
can be configured to say, and :class:`ScriptedDns`, a few lines of UDP and TCP that answer each
query with whatever bytes a test scripts (wrong IDs, wrong questions, TC, CNAME loops, garbage),
which no real server sends on purpose. Every outcome must be bounded in time and explained:
targets, or a reply with its reason.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, HopKind
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import HOP_BUDGET, MAX_EXCHANGES, MAX_TARGETS, DnsResolver
from tests.dnsserver import LOCALHOST, DnsServer, local_resolver
from tests.transport.test_dns import LIFETIME, SLACK, TIMEOUT, resolver_for

pytestmark = pytest.mark.integration


BIG = 1000
ANY_V4 = ".".join("0" * 4)  # the unspecified address, in DNS answers only (never bound)
RECORDS = (
    # A thousand MX records (needs TCP: the UDP answer is truncated), preferences 0..6, none of
    # which exists (with an address for each, dnsmasq 2.90 sends a TCP answer dnspython cannot
    # read: more than 16 KiB of names defeats its compression pointers).
    *(f"mx-host=big.test,m{n:04d}.big.test,{n % 7}" for n in range(BIG)),
    "mx-host=ipmx.test,127.0.0.99,10",  # an address as the exchange's name
    "mx-host=lhmx.test,localhost,10",
    "cname=c1.test,c2.test",
    "cname=c2.test,c3.test",
    "host-record=c3.test,127.0.0.41",
    "mx-host=cnamemx.test,c1.test,10",  # RFC 2181 section 10.3 forbids it; it still resolves
    "mx-host=ties.test,t1.ties.test,65535",
    "mx-host=ties.test,t2.ties.test,65535",
    "mx-host=ties.test,t3.ties.test,0",
    *(f"host-record=t{n}.ties.test,127.0.0.5{n}" for n in (1, 2, 3)),
    "mx-host=nodatamx.test,noaddr.nodatamx.test,10",
    'txt-record=noaddr.nodatamx.test,"no address"',
    "mx-host=nxmx.test,nowhere.nxmx.test,10",
    "mx-host=failmx.test,mx.broken.test,10",
    "mx-host=self.test,better.self.test,10",
    "mx-host=self.test,me.self.test,20",
    "mx-host=self.test,worse.self.test,30",
    "host-record=better.self.test,127.0.0.61",
    "host-record=worse.self.test,127.0.0.63",
    "server=/broken.test/#",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(RECORDS, directory=tmp_path_factory.mktemp("hostiledns")) as server:
        yield server


def mx(domain: str) -> Hop:
    return Hop(HopKind.MX, domain, 25)


def notes(transcript: Transcript) -> list[str]:
    return [line.partition(" * ")[2] for line in transcript.lines]


# --- a scripted server: any bytes, for any query -----------------------------------------------

Script = Callable[[dns.message.Message, str], list[bytes]]
"""What to send back for a query that came over ``"udp"`` or ``"tcp"``: zero or more messages."""


class ScriptedDns:
    """UDP and TCP on one port of 127.0.0.1, answering each query as ``script`` says."""

    def __init__(self, script: Script, *, tcp: bool = True) -> None:
        self.script = script
        self.queries: list[tuple[str, str, str]] = []
        self._udp, self._tcp = _one_port(tcp=tcp)
        self.port: int = self._udp.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True)]
        if self._tcp is not None:
            self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True))

    def _answer(self, wire: bytes, transport: str) -> list[bytes]:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 (a test server: garbage in, nothing out)
            return []
        question = query.question[0]
        self.queries.append(
            (transport, question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
        )
        return self.script(query, transport)

    def _serve_udp(self) -> None:
        while True:
            try:
                wire, peer = self._udp.recvfrom(65535)
            except OSError:
                return
            for reply in self._answer(wire, "udp"):
                try:
                    self._udp.sendto(reply, peer)
                except OSError:
                    return

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while True:
            try:
                connection, _ = self._tcp.accept()
            except OSError:
                return
            with connection:
                try:
                    size = struct.unpack("!H", _read(connection, 2))[0]
                    for reply in self._answer(_read(connection, size), "tcp"):
                        connection.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    pass

    def resolver(self, **options: Any) -> DnsResolver:
        """A resolver asking this server only; ``options`` go to :class:`DnsResolver`."""
        return DnsResolver(
            resolver=local_resolver(self.port, timeout=TIMEOUT, lifetime=LIFETIME),
            rng=random.Random(0),
            **options,
        )

    def __enter__(self) -> ScriptedDns:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


def _one_port(*, tcp: bool) -> tuple[socket.socket, socket.socket | None]:
    """A UDP socket on a free port of 127.0.0.1 and, with ``tcp``, a listening TCP one on the
    same port. The port is free for UDP only: another test's TCP socket may hold it (the bind
    failed with EADDRINUSE, and the UDP socket was left for the garbage collector to close in
    some later test, as a ResourceWarning). Another port then, everything closed."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((LOCALHOST, 0))
        if not tcp:
            return udp, None
        stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            stream.bind((LOCALHOST, udp.getsockname()[1]))
            stream.listen()
        except OSError:
            stream.close()
            udp.close()
            continue
        return udp, stream
    raise AssertionError("no port of 127.0.0.1 free for both UDP and TCP in 50 tries")


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


Zone = dict[tuple[str, str], list[str]]


def zone_script(zone: Zone, *, cnames: dict[str, str] | None = None) -> Script:
    """Answers from ``zone`` ({(name, type): [rdata text]}); names without the type: NODATA;
    other names: NXDOMAIN; ``cnames`` maps a name to its CNAME target (followed in the answer,
    at most 20 times, so that a loop shows as a loop)."""
    cnames = cnames or {}
    names = {name for name, _ in zone} | set(cnames)
    rrsets = {
        key: dns.rrset.from_text_list(key[0], 60, "IN", key[1], texts)
        for key, texts in zone.items()
    }

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        question = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        for _ in range(20):
            if name not in cnames:
                break
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", cnames[name]))
            name = cnames[name]
        if (name, rdtype) in rrsets:
            response.answer.append(rrsets[name, rdtype])
        elif name not in names and not response.answer:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if transport == "udp" and len(response.to_wire()) > 512:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC  # RFC 1035 section 4.2.1: 512 octets over UDP
        return [response.to_wire()]

    return script


# --- big and odd MX sets ---------------------------------------------------------------------


def test_a_thousand_mx_records_cost_a_bounded_number_of_lookups(
    server: DnsServer, transcript: Transcript
) -> None:
    started = time.monotonic()
    resolution = resolver_for(server).resolve(mx("big.test"), transcript)
    assert time.monotonic() - started < 5
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "5.4.4"
    assert resolution.reply.text.endswith(f"and {MAX_EXCHANGES - 3} more")
    lines = notes(transcript)
    assert f"MX big.test: {BIG} exchangers, trying the first {MAX_EXCHANGES}" in lines
    asked = [line for line in lines if line.startswith("AAAA ")]
    assert len(asked) == MAX_EXCHANGES
    # Best preference first: only preference-0 exchangers are asked.
    assert all(int(line[6:10]) % 7 == 0 for line in asked)
    # The transcript stays readable: the answer line is bounded by the DNS message (64 KiB).
    assert len(transcript.text) < 64 * 1024


def test_an_address_as_exchange_name_is_asked_as_a_name_not_used_as_an_address(
    server: DnsServer, transcript: Transcript
) -> None:
    resolution = resolver_for(server).resolve(mx("ipmx.test"), transcript)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "4.4.3"  # dnsmasq refuses names outside .test
    assert "127.0.0.99" in resolution.reply.text


def test_an_address_as_exchange_name_that_does_not_exist_is_permanent(
    transcript: Transcript,
) -> None:
    zone: Zone = {("ipmx.test.", "MX"): ["10 127.0.0.99."]}
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("ipmx.test"), transcript)
    assert resolution.reply == Reply(
        550,
        "5.4.4",
        "no mail exchanger of ipmx.test has an address: "
        "host 127.0.0.99 does not exist (DNS NXDOMAIN)",
    )


def test_localhost_as_exchanger_is_explained(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("lhmx.test"), transcript)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert "localhost" in resolution.reply.text


def test_a_cname_chain_as_exchanger_is_followed(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("cnamemx.test"), transcript)
    assert [(t.name, t.host) for t in resolution.targets] == [("c1.test", "127.0.0.41")]


def test_a_cname_loop_is_a_bounded_explained_failure(transcript: Transcript) -> None:
    zone: Zone = {("loop.test.", "MX"): ["10 a.loop.test."]}
    cnames = {"a.loop.test.": "b.loop.test.", "b.loop.test.": "a.loop.test."}
    with ScriptedDns(zone_script(zone, cnames=cnames)) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("loop.test"), transcript)
    assert time.monotonic() - started < LIFETIME * 4 + SLACK
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert resolution.reply.enhanced in ("4.4.3", "5.4.4")
    assert "a.loop.test" in resolution.reply.text


def test_equal_and_huge_preferences(server: DnsServer, transcript: Transcript) -> None:
    orders = {
        tuple(
            str(t.name)
            for t in resolver_for(server, seed=seed).resolve(mx("ties.test"), transcript).targets
        )
        for seed in range(20)
    }
    assert orders == {
        ("t3.ties.test", "t1.ties.test", "t2.ties.test"),
        ("t3.ties.test", "t2.ties.test", "t1.ties.test"),
    }


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("nodatamx.test", "5.4.4"),
        ("nxmx.test", "5.4.4"),
        ("failmx.test", "4.4.3"),
    ],
)
def test_an_exchanger_without_address_is_explained(
    server: DnsServer, transcript: Transcript, domain: str, expected: str
) -> None:
    resolution = resolver_for(server).resolve(mx(domain), transcript)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert resolution.reply.enhanced == expected
    assert resolution.reply.text.startswith(f"no mail exchanger of {domain}")


def test_this_host_in_the_list_drops_itself_and_worse(
    server: DnsServer, transcript: Transcript
) -> None:
    resolver = resolver_for(server, local_names=("ME.self.test.",))
    resolution = resolver.resolve(mx("self.test"), transcript)
    assert [t.host for t in resolution.targets] == ["127.0.0.61"]
    assert not any("worse.self.test" in line for line in notes(transcript)[1:])


@pytest.mark.parametrize("length", [254, 300, 5000])
def test_a_name_over_253_octets_is_refused_without_a_lookup(
    server: DnsServer, transcript: Transcript, length: int
) -> None:
    name = ("a" * 49 + ".") * (length // 50) + "test"
    resolution = resolver_for(server).resolve(mx(name[-length:].lstrip(".")), transcript)
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "5.1.2"
    assert transcript.lines == []


def test_a_maximal_exchange_name_from_the_wire_is_handled(transcript: Transcript) -> None:
    long_name = ".".join(["b" * 63] * 3 + ["c" * 61]) + "."  # 255 octets on the wire
    zone: Zone = {("long.test.", "MX"): [f"10 {long_name}"]}
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("long.test"), transcript)
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "5.4.4"


# --- addresses no mail host has --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rdtype", "address"),
    [
        ("A", ANY_V4),
        ("A", "255.255.255.255"),
        ("A", "224.0.0.1"),
        ("AAAA", "::"),
        ("AAAA", "ff02::1"),
    ],
)
def test_an_unspecified_or_multicast_address_is_never_a_target(
    transcript: Transcript, rdtype: str, address: str
) -> None:
    """0.0.0.0 and :: reach this very host (Linux connects them to loopback): a DNS answer
    must not turn a remote domain into a delivery to ourselves."""
    zone: Zone = {
        ("odd.test.", "MX"): ["10 mx.odd.test."],
        ("mx.odd.test.", rdtype): [address],
    }
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("odd.test"), transcript)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "5.4.4"
    assert address in resolution.reply.text


def test_unusable_addresses_are_skipped_beside_good_ones(transcript: Transcript) -> None:
    zone: Zone = {
        ("odd.test.", "MX"): ["10 mx.odd.test."],
        ("mx.odd.test.", "A"): [ANY_V4, "127.0.0.71"],
    }
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("odd.test"), transcript)
    assert [t.host for t in resolution.targets] == ["127.0.0.71"]
    assert f"mx.odd.test: {ANY_V4}: not a host address, skipped" in notes(transcript)


# --- nameservers that lie, truncate, or say nothing --------------------------------------------


def test_a_silent_server_is_temporary_within_the_lifetime(transcript: Transcript) -> None:
    with ScriptedDns(lambda query, transport: []) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("example.test"), transcript)
    assert time.monotonic() - started < LIFETIME + SLACK
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert "timed out" in resolution.reply.text


def test_silent_exchangers_cost_at_most_two_lifetimes_each(transcript: Transcript) -> None:
    names = [f"m{n}.wide.test." for n in range(30)]
    answer = zone_script({("wide.test.", "MX"): [f"10 {n}" for n in names]})

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        return answer(query, transport) if query.question[0].rdtype == dns.rdatatype.MX else []

    with ScriptedDns(script) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("wide.test"), transcript)
        elapsed = time.monotonic() - started
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "4.4.3"
    # The documented bound: the MX lookup and two per exchanger tried, each up to the lifetime
    # (and dnspython's overshoot of it, measured at 0.2 s).
    assert elapsed < (1 + 2 * MAX_EXCHANGES) * (LIFETIME + 0.3) + SLACK
    assert len([line for line in notes(transcript) if line.startswith("AAAA ")]) == MAX_EXCHANGES


def test_a_hops_lookups_stop_when_its_budget_is_spent(transcript: Transcript) -> None:
    """Ten silent exchangers held a delivery for 21 lifetimes (105 s at dnspython's 5 s): the
    hop's lookups now take the budget at most (each is given no more than is left)."""
    names = [f"m{n}.wide.test." for n in range(30)]
    answer = zone_script({("wide.test.", "MX"): [f"10 {n}" for n in names]})

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        return answer(query, transport) if query.question[0].rdtype == dns.rdatatype.MX else []

    budget = 2 * LIFETIME
    with ScriptedDns(script) as dns_server:
        # A resolver whose own lifetime is far longer than the budget: a lookup gets what is left.
        resolver = DnsResolver(
            resolver=local_resolver(dns_server.port, timeout=TIMEOUT, lifetime=20 * LIFETIME),
            budget=budget,
        )
        started = time.monotonic()
        resolution = resolver.resolve(mx("wide.test"), transcript)
        elapsed = time.monotonic() - started
    assert elapsed < budget + 0.3 + SLACK
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert f"the lookups took {budget:g} s, the most a hop may" in resolution.reply.text
    assert (
        f"MX wide.test: the lookups took {budget:g} s, the most a hop may, looking no further"
        in (notes(transcript))
    )
    assert len([line for line in notes(transcript) if line.startswith("AAAA ")]) < 4


def test_exchangers_the_budget_left_unasked_keep_the_verdict_temporary(
    transcript: Transcript,
) -> None:
    """The first exchanger has no address (permanent), and the budget is spent by then: the
    exchangers not looked up may have one, so the message waits rather than bounce."""
    now = [0.0]
    answer = zone_script(
        {
            ("late.test.", "MX"): ["10 m0.late.test.", "20 m1.late.test."],
            ("m0.late.test.", "TXT"): ['"no address"'],
            ("m1.late.test.", "A"): ["127.0.0.91"],
        }
    )

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        question = query.question[0]
        if question.name.to_text() == "m0.late.test." and question.rdtype == dns.rdatatype.A:
            now[0] += HOP_BUDGET  # the lookup that spends the budget
        return answer(query, transport)

    with ScriptedDns(script) as dns_server:
        resolver = dns_server.resolver(monotonic=lambda: now[0])
        resolution = resolver.resolve(mx("late.test"), transcript)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert "host m0.late.test has no address" in resolution.reply.text
    asked = [line.split(":")[0] for line in notes(transcript)]
    assert "A m0.late.test" in asked
    assert not any(line.endswith("m1.late.test") for line in asked)


def test_a_budget_of_no_time_is_refused() -> None:
    with pytest.raises(ValueError, match="budget must be a positive number of seconds"):
        DnsResolver(budget=0)


def test_a_truncated_answer_is_asked_again_over_tcp(transcript: Transcript) -> None:
    answer = zone_script(
        {("tc.test.", "MX"): ["10 mx.tc.test."], ("mx.tc.test.", "A"): ["127.0.0.81"]}
    )

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        if transport == "udp":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            return [response.to_wire()]
        return answer(query, transport)

    with ScriptedDns(script) as dns_server:
        resolution = dns_server.resolver().resolve(mx("tc.test"), transcript)
        assert ("tcp", "tc.test.", "MX") in dns_server.queries
    assert [t.host for t in resolution.targets] == ["127.0.0.81"]


@pytest.mark.parametrize("tcp", [True, False])
def test_a_server_that_always_truncates_is_temporary(transcript: Transcript, tcp: bool) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.TC
        return [response.to_wire()]

    with ScriptedDns(script, tcp=tcp) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("tc.test"), transcript)
    assert time.monotonic() - started < LIFETIME + SLACK
    # Not NODATA (the implicit MX, then a bounce for "no address"): a failure, tried later.
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert len(transcript.lines) == 1


def test_a_truncated_tcp_answer_with_records_is_not_taken(transcript: Transcript) -> None:
    zone: Zone = {("tc.test.", "MX"): ["10 mx.tc.test."], ("mx.tc.test.", "A"): ["127.0.0.81"]}
    answer = zone_script(zone)

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        response = dns.message.from_wire(answer(query, transport)[0])
        response.flags |= dns.flags.TC
        return [response.to_wire()]

    with ScriptedDns(script) as dns_server:
        resolution = dns_server.resolver().resolve(mx("tc.test"), transcript)
    assert resolution.reply == Reply(
        451, "4.4.3", "MX lookup for tc.test failed: truncated answer (TC) over TCP"
    )


@pytest.mark.parametrize("what", ["id", "question", "garbage"])
def test_an_answer_that_does_not_match_the_query_is_ignored(
    transcript: Transcript, what: str
) -> None:
    """A reply with the wrong ID or question (a spoofing attempt) is not taken; the right one
    that follows is."""
    right = zone_script(
        {("sp.test.", "MX"): ["10 mx.sp.test."], ("mx.sp.test.", "A"): ["127.0.0.91"]}
    )
    lie = zone_script(
        {("sp.test.", "MX"): ["10 evil.sp.test."], ("evil.sp.test.", "A"): ["127.0.0.66"]}
    )

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        if what == "garbage":
            return [b"\x00" * 3 + b"\xff" * 40, *right(query, transport)]
        forged = dns.message.from_wire(lie(query, transport)[0])
        if what == "id":
            forged.id = (query.id + 1) % 65536
        else:
            forged.question = [dns.rrset.RRset(dns.name.from_text("other.test."), 1, 15)]
        return [forged.to_wire(), *right(query, transport)]

    with ScriptedDns(script) as dns_server:
        resolution = dns_server.resolver().resolve(mx("sp.test"), transcript)
    assert [t.host for t in resolution.targets] == ["127.0.0.91"]


@pytest.mark.parametrize("what", ["id", "question"])
def test_only_forged_answers_time_out(transcript: Transcript, what: str) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        response = dns.message.make_response(query)
        if what == "id":
            response.id = (query.id + 1) % 65536
        else:
            response.question = [dns.rrset.RRset(dns.name.from_text("other.test."), 1, 15)]
        return [response.to_wire()] * 50

    with ScriptedDns(script) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("sp.test"), transcript)
    assert time.monotonic() - started < LIFETIME + SLACK
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "4.4.3"


@pytest.mark.parametrize(
    "rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP]
)
def test_an_error_rcode_is_temporary(transcript: Transcript, rcode: dns.rcode.Rcode) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return [response.to_wire()]

    with ScriptedDns(script) as dns_server:
        resolution = dns_server.resolver().resolve(mx("err.test"), transcript)
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert dns.rcode.to_text(rcode) in resolution.reply.text


def test_a_compression_loop_is_temporary(transcript: Transcript) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        wire = bytearray(dns.message.make_response(query).to_wire())
        wire[7] = 1  # one answer record...
        # ...whose owner name is a pointer to itself.
        offset = len(wire)
        wire += struct.pack("!H", 0xC000 | offset) + struct.pack("!HHIH", 15, 1, 60, 0)
        return [bytes(wire)]

    with ScriptedDns(script) as dns_server:
        started = time.monotonic()
        resolution = dns_server.resolver().resolve(mx("ptr.test"), transcript)
    assert time.monotonic() - started < LIFETIME + SLACK
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "4.4.3"


def test_records_for_other_names_in_the_answer_are_not_used(transcript: Transcript) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text("evil.test.", 60, "IN", "MX", "10 mx.evil.test.")
        )
        return [response.to_wire()]

    with ScriptedDns(script) as dns_server:
        resolution = dns_server.resolver().resolve(mx("inj.test"), transcript)
    assert all(t.name != "mx.evil.test" for t in resolution.targets)
    assert resolution.reply is not None
    assert "mx.evil.test" not in resolution.reply.text


def test_a_thousand_mx_records_with_addresses_give_the_best_targets(
    transcript: Transcript,
) -> None:
    zone: Zone = {("big.test.", "MX"): [f"{n % 7} m{n:04d}.big.test." for n in range(BIG)]}
    zone.update(
        {(f"m{n:04d}.big.test.", "A"): [f"127.2.{n // 250}.{n % 250 + 1}"] for n in range(BIG)}
    )
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("big.test"), transcript)
        assert ("tcp", "big.test.", "MX") in dns_server.queries
    assert len(resolution.targets) == MAX_EXCHANGES  # one address each
    assert all(int(str(t.name)[1:5]) % 7 == 0 for t in resolution.targets)


def test_a_huge_address_set_is_capped(transcript: Transcript) -> None:
    addresses = [f"127.1.{n // 250}.{n % 250 + 1}" for n in range(1000)]
    zone: Zone = {("h.test.", "MX"): ["10 mx.h.test."], ("mx.h.test.", "A"): addresses}
    with ScriptedDns(zone_script(zone)) as dns_server:
        resolution = dns_server.resolver().resolve(mx("h.test"), transcript)
    assert len(resolution.targets) == MAX_TARGETS
