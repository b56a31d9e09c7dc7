"""The DNS resolver against a real dnsmasq on 127.0.0.1 (``tests/dnsserver.py``), and its edges.

Each DNS outcome of docs/delivery.md is looked up for real: targets and replies, and the lines
the transcript gets. Every resolver here is ``Resolver(configure=False)`` aimed at 127.0.0.1; the
few tests that need an outcome dnsmasq cannot produce (YXDOMAIN, a broken configuration) use a
resolver whose ``resolve`` raises, and send nothing.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import pytest

from spoolmail._core.reply import Reply, Severity
from spoolmail._core.routing import Credentials, Hop, HopKind, Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Resolution
from spoolmail._transport.dns import MAX_EXCHANGES, MAX_TARGETS, DnsResolver
from tests.dnsserver import RECORDS, DnsServer, closed_port, local_resolver

integration = pytest.mark.integration

# Small, so that the tests that wait for a timeout on purpose stay short.
TIMEOUT = 0.2
LIFETIME = 0.5
# What dnspython overshoots the lifetime by (measured: 0.2 s), plus room for a loaded machine.
SLACK = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(RECORDS, directory=tmp_path_factory.mktemp("dnsmasq")) as server:
        yield server


def resolver_for(
    server: DnsServer, *, seed: int = 0, local_names: tuple[str, ...] = ()
) -> DnsResolver:
    return DnsResolver(
        resolver=server.resolver(timeout=TIMEOUT, lifetime=LIFETIME),
        local_names=local_names,
        rng=random.Random(seed),
    )


def notes(transcript: Transcript) -> list[str]:
    """The transcript's notes without their time stamps."""
    return [line.partition(" * ")[2] for line in transcript.lines]


def mx(domain: str, port: int = 25) -> Hop:
    return Hop(HopKind.MX, domain, port)


def hosts(targets: tuple[Target, ...]) -> list[tuple[str | None, str]]:
    return [(target.name, target.host) for target in targets]


# --- the dnsmasq fixture itself ----------------------------------------------------------------


@integration
def test_the_fixture_resolver_asks_only_the_local_server(server: DnsServer) -> None:
    resolver = server.resolver()
    assert [str(ns) for ns in resolver.nameservers] == ["127.0.0.1"]
    assert (resolver.port, resolver.timeout, resolver.lifetime) == (server.port, 1.0, 2.0)
    assert resolver.cache is None
    answer = resolver.resolve("example.test", "MX", search=False)
    assert sorted(rdata.to_text() for rdata in answer) == [
        "10 mx1.example.test.",
        "10 mx2.example.test.",
        "20 backup.example.test.",
    ]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nosuch.test", "A", search=False)
    assert "query[MX] example.test from 127.0.0.1" in server.log


@integration
def test_a_server_that_cannot_start_fails_with_its_message() -> None:
    with pytest.raises(RuntimeError, match="bad MX preference"), DnsServer(["mx-host=a.test,,x"]):
        pass


# --- MX hops -----------------------------------------------------------------------------------


@integration
def test_mx_hosts_by_preference_with_their_addresses(
    server: DnsServer, transcript: Transcript
) -> None:
    hop = Hop(HopKind.MX, "example.test", 2525, tls=TlsPolicy.REQUIRED)
    resolution = resolver_for(server).resolve(hop, transcript)
    assert resolution.reply is None
    names = [str(target.name) for target in resolution.targets]
    assert sorted(names[:2]) == ["mx1.example.test", "mx2.example.test"]
    assert names[2] == "backup.example.test"
    by_name = {target.name: target for target in resolution.targets}
    assert by_name["mx1.example.test"] == Target(
        "127.0.0.11", 2525, name="mx1.example.test", tls=TlsPolicy.REQUIRED
    )
    assert by_name["backup.example.test"].host == "127.0.0.13"
    lines = notes(transcript)
    assert lines[:2] == [
        "MX example.test: 10 mx1.example.test, 10 mx2.example.test, 20 backup.example.test",
        f"MX example.test: trying {', '.join(names)}",
    ]
    assert "AAAA mx1.example.test: no AAAA record (NODATA)" in lines
    assert "A mx1.example.test: 127.0.0.11" in lines
    assert "A backup.example.test: 127.0.0.13" in lines


@integration
def test_equal_preferences_are_shuffled_across_seeds(
    server: DnsServer, transcript: Transcript
) -> None:
    orders = set()
    for seed in range(20):
        resolution = resolver_for(server, seed=seed).resolve(mx("example.test"), transcript)
        orders.add(tuple(target.name for target in resolution.targets))
    assert orders == {
        ("mx1.example.test", "mx2.example.test", "backup.example.test"),
        ("mx2.example.test", "mx1.example.test", "backup.example.test"),
    }


@integration
def test_the_same_seed_gives_the_same_order(server: DnsServer, transcript: Transcript) -> None:
    first = resolver_for(server, seed=3).resolve(mx("example.test"), transcript)
    again = resolver_for(server, seed=3).resolve(mx("example.test"), transcript)
    assert first == again


@integration
def test_no_mx_record_means_the_implicit_mx(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("implicit.test"), transcript)
    assert resolution.targets == (Target("127.0.0.21", 25, name="implicit.test"),)
    assert notes(transcript) == [
        "MX implicit.test: no MX record (NODATA)",
        "MX implicit.test: implicit MX, implicit.test at preference 0 (RFC 5321 5.1)",
        "AAAA implicit.test: no AAAA record (NODATA)",
        "A implicit.test: 127.0.0.21",
    ]


@integration
def test_a_dual_stack_exchanger_gives_ipv6_then_ipv4(
    server: DnsServer, transcript: Transcript
) -> None:
    resolution = resolver_for(server).resolve(mx("dualmx.test"), transcript)
    assert hosts(resolution.targets) == [("dual.test", "::1"), ("dual.test", "127.0.0.31")]
    assert notes(transcript)[-2:] == ["AAAA dual.test: ::1", "A dual.test: 127.0.0.31"]


@integration
def test_null_mx_is_a_permanent_556(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("nullmx.test"), transcript)
    reply = Reply(556, "5.1.10", "nullmx.test does not accept mail (null MX, RFC 7505)")
    assert resolution == Resolution((), reply)
    assert notes(transcript) == ["MX nullmx.test: 0 .", f"MX nullmx.test: {reply}"]


@integration
def test_a_null_mx_beside_a_real_one_is_skipped(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("mixednull.test"), transcript)
    assert hosts(resolution.targets) == [("mx1.example.test", "127.0.0.11")]
    assert notes(transcript)[0] == "MX mixednull.test: 0 ., 10 mx1.example.test"


@integration
def test_a_domain_that_does_not_exist_is_permanent_5_1_2(
    server: DnsServer, transcript: Transcript
) -> None:
    resolution = resolver_for(server).resolve(mx("nosuch.test"), transcript)
    assert resolution.reply == Reply(
        550, "5.1.2", "domain nosuch.test does not exist (DNS NXDOMAIN)"
    )
    assert resolution.targets == ()
    # No implicit MX for NXDOMAIN: nothing else was asked.
    assert notes(transcript) == ["MX nosuch.test: does not exist (NXDOMAIN)"]


@integration
def test_a_failing_server_is_temporary_4_4_3(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("broken.test"), transcript)
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert resolution.reply.text.startswith("MX lookup for broken.test failed: no nameserver")
    assert "REFUSED" in resolution.reply.text
    assert notes(transcript) == [
        f"MX broken.test: no nameserver answered (Do53:127.0.0.1@{server.port} REFUSED)"
    ]


@integration
def test_a_silent_upstream_is_temporary_within_the_lifetime(
    server: DnsServer, transcript: Transcript
) -> None:
    started = time.monotonic()
    resolution = resolver_for(server).resolve(mx("slow.test"), transcript)
    elapsed = time.monotonic() - started
    assert resolution.reply is not None
    assert resolution.reply.severity is Severity.TEMPORARY
    assert resolution.reply.enhanced == "4.4.3"
    assert "timed out after" in resolution.reply.text
    assert LIFETIME <= elapsed < LIFETIME + SLACK
    assert notes(transcript)[0].startswith("MX slow.test: timed out after")


@integration
def test_a_dangling_mx_is_permanent_and_its_a_record_is_not_asked(
    server: DnsServer, transcript: Transcript
) -> None:
    resolution = resolver_for(server).resolve(mx("dangling.test"), transcript)
    assert resolution.reply == Reply(
        550,
        "5.4.4",
        "no mail exchanger of dangling.test has an address: "
        "host nowhere.dangling.test does not exist (DNS NXDOMAIN)",
    )
    assert notes(transcript) == [
        "MX dangling.test: 10 nowhere.dangling.test",
        "MX dangling.test: trying nowhere.dangling.test",
        "AAAA nowhere.dangling.test: does not exist (NXDOMAIN)",
    ]


@integration
def test_no_mx_and_no_address_is_permanent(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("noaddress.test"), transcript)
    assert resolution.reply == Reply(
        550,
        "5.4.4",
        "no mail exchanger of noaddress.test has an address: "
        "host noaddress.test has no address (no AAAA or A record)",
    )
    assert notes(transcript)[-2:] == [
        "AAAA noaddress.test: no AAAA record (NODATA)",
        "A noaddress.test: no A record (NODATA)",
    ]


@integration
def test_a_failing_exchanger_is_passed_over(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("partial.test"), transcript)
    assert hosts(resolution.targets) == [("backup.example.test", "127.0.0.13")]
    assert resolution.reply is None
    assert any(line.startswith("AAAA mx.broken.test: no nameserver") for line in notes(transcript))


@integration
def test_exchangers_failing_temporarily_and_for_good_are_temporary(
    server: DnsServer, transcript: Transcript
) -> None:
    resolution = resolver_for(server).resolve(mx("halfbroken.test"), transcript)
    reply = resolution.reply
    assert reply is not None
    assert (reply.code, reply.enhanced) == (451, "4.4.3")
    assert reply.text == (
        "no mail exchanger of halfbroken.test can be reached now: "
        "address lookup for mx.broken.test failed: AAAA and A: no nameserver answered "
        f"(Do53:127.0.0.1@{server.port} REFUSED); "
        "host nowhere.halfbroken.test does not exist (DNS NXDOMAIN)"
    )


@integration
def test_an_address_is_listed_once(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("samehost.test"), transcript)
    assert hosts(resolution.targets) == [("mx1.example.test", "127.0.0.11")]
    assert "alias.samehost.test: 127.0.0.11 is already listed, not repeated" in notes(transcript)


@integration
def test_addresses_are_capped(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("many.test"), transcript)
    assert len(resolution.targets) == MAX_TARGETS
    # Three addresses each: the first six exchangers whole, two of the seventh; no more lookups.
    assert {target.name for target in resolution.targets} == {
        f"m{n:02d}.many.test" for n in range(1, 8)
    }
    lines = notes(transcript)
    assert "MX many.test: 12 exchangers, trying the first 10" in lines
    assert lines[-1] == f"MX many.test: {MAX_TARGETS} addresses found, looking no further"
    assert not any("m08.many.test:" in line for line in lines)


@integration
def test_exchangers_are_capped(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(mx("wide.test"), transcript)
    assert resolution.reply is not None
    assert resolution.reply.enhanced == "5.4.4"
    assert resolution.reply.text.endswith(f"and {MAX_EXCHANGES - 3} more")
    looked_up = [line for line in notes(transcript) if line.startswith("AAAA ")]
    assert len(looked_up) == MAX_EXCHANGES
    assert looked_up[-1] == "AAAA n10.wide.test: does not exist (NXDOMAIN)"


@pytest.mark.parametrize(
    "local_names",
    [("backup.example.test",), ("relay.test", "Backup.Example.Test.")],
)
@integration
def test_this_host_and_worse_exchangers_are_dropped(
    server: DnsServer, transcript: Transcript, local_names: tuple[str, ...]
) -> None:
    resolver = resolver_for(server, local_names=local_names)
    resolution = resolver.resolve(mx("example.test"), transcript)
    assert {target.name for target in resolution.targets} == {
        "mx1.example.test",
        "mx2.example.test",
    }
    assert not any("backup.example.test:" in line for line in notes(transcript))


@pytest.mark.parametrize(
    ("local_names", "domain"),
    [
        (("mx2.example.test",), "example.test"),  # one of the two best: every MX is dropped
        (("implicit.test",), "implicit.test"),  # the implicit MX is this host
    ],
)
@integration
def test_this_host_as_best_mx_is_a_loop(
    server: DnsServer, transcript: Transcript, local_names: tuple[str, ...], domain: str
) -> None:
    resolver = resolver_for(server, local_names=local_names)
    resolution = resolver.resolve(mx(domain), transcript)
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (550, "5.4.6")
    assert resolution.reply.text.startswith(f"mail for {domain} loops back to myself")
    assert not any(line.startswith(("A ", "AAAA ")) for line in notes(transcript))


# --- HOST hops ---------------------------------------------------------------------------------


@integration
def test_a_host_gives_every_address_with_the_hops_settings(
    server: DnsServer, transcript: Transcript
) -> None:
    secret = Credentials("user", "secret")
    hop = Hop(HopKind.HOST, "Dual.Test.", 587, tls=TlsPolicy.ENCRYPT, credentials=secret)
    resolution = resolver_for(server).resolve(hop, transcript)
    assert resolution.targets == tuple(
        Target(address, 587, name="dual.test", tls=TlsPolicy.ENCRYPT, credentials=secret)
        for address in ("::1", "127.0.0.31")
    )
    assert resolution.targets[0].credentials is secret
    assert notes(transcript) == ["AAAA dual.test: ::1", "A dual.test: 127.0.0.31"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nosuch.test", Reply(550, "5.4.4", "host nosuch.test does not exist (DNS NXDOMAIN)")),
        (
            "example.test",
            Reply(550, "5.4.4", "host example.test has no address (no AAAA or A record)"),
        ),
    ],
)
@integration
def test_a_host_without_address_is_permanent(
    server: DnsServer, transcript: Transcript, name: str, expected: Reply
) -> None:
    resolution = resolver_for(server).resolve(Hop(HopKind.HOST, name), transcript)
    assert resolution.reply == expected


@integration
def test_a_host_lookup_failure_is_temporary(server: DnsServer, transcript: Transcript) -> None:
    resolution = resolver_for(server).resolve(Hop(HopKind.HOST, "relay.broken.test"), transcript)
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert resolution.reply.text.startswith("address lookup for relay.broken.test failed: AAAA")


# --- no lookup at all --------------------------------------------------------------------------


def dead_resolver(*, timeout: float = TIMEOUT, lifetime: float = LIFETIME) -> DnsResolver:
    """A resolver whose nameserver is a closed port on 127.0.0.1: any lookup would time out."""
    return DnsResolver(resolver=local_resolver(closed_port(), timeout=timeout, lifetime=lifetime))


@pytest.mark.parametrize(
    ("hop", "target"),
    [
        (Hop(HopKind.ADDRESS, "127.0.0.1", 2525), Target("127.0.0.1", 2525, literal=True)),
        (Hop(HopKind.ADDRESS, "::1"), Target("::1", 25, literal=True)),
        (Hop(HopKind.HOST, "127.0.0.5", 26), Target("127.0.0.5", 26, literal=True)),
        (Hop(HopKind.MX, "[127.0.0.6]"), Target("127.0.0.6", 25, literal=True)),
        (Hop(HopKind.MX, "[IPv6:::1]"), Target("::1", 25, literal=True)),
    ],
)
def test_addresses_need_no_lookup(hop: Hop, target: Target, transcript: Transcript) -> None:
    # A long lifetime: a lookup would show as a multi-second wait.
    resolver = dead_resolver(timeout=5, lifetime=5)
    started = time.monotonic()
    assert resolver.resolve(hop, transcript).targets == (target,)
    assert time.monotonic() - started < 1
    assert transcript.lines == []


def test_an_address_hop_keeps_tls_and_credentials(transcript: Transcript) -> None:
    secret = Credentials("user", "secret")
    hop = Hop(HopKind.ADDRESS, "127.0.0.1", 587, tls=TlsPolicy.REQUIRED, credentials=secret)
    (target,) = dead_resolver().resolve(hop, transcript).targets
    assert (target.tls, target.credentials, target.name) == (TlsPolicy.REQUIRED, secret, None)


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        ("a..test", "'a..test' is not a domain name"),
        ("", "'' is not a domain name"),
        ("[relay.test]", "'[relay.test]' is not an address literal"),
    ],
)
def test_a_bad_domain_is_permanent_without_a_lookup(
    domain: str, text: str, transcript: Transcript
) -> None:
    resolution = dead_resolver(timeout=5, lifetime=5).resolve(mx(domain), transcript)
    assert resolution.reply == Reply(550, "5.1.2", text)
    assert transcript.lines == []


def test_the_system_resolver_is_created_at_the_first_lookup(
    monkeypatch: pytest.MonkeyPatch, transcript: Transcript
) -> None:
    created: list[str] = []

    def no_configuration() -> dns.resolver.Resolver:
        created.append("created")
        raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")

    monkeypatch.setattr(dns.resolver, "Resolver", no_configuration)
    resolver = DnsResolver()
    hop = Hop(HopKind.ADDRESS, "127.0.0.1")
    assert resolver.resolve(hop, transcript).targets == (Target("127.0.0.1", literal=True),)
    assert created == []
    # A broken configuration is a temporary reply, not an exception, and is tried again later.
    resolution = resolver.resolve(mx("example.test"), transcript)
    assert resolution.reply == Reply(
        451,
        "4.4.3",
        "MX lookup for example.test failed: NoResolverConfiguration: no /etc/resolv.conf",
    )
    resolver.resolve(mx("example.test"), transcript)
    assert created == ["created", "created"]


# --- nameservers that never answer -------------------------------------------------------------


@pytest.mark.parametrize("where", ["black hole", "closed port"])
@integration
def test_a_dead_nameserver_is_temporary_within_the_lifetime(
    server: DnsServer, transcript: Transcript, where: str
) -> None:
    port = server.blackhole_port if where == "black hole" else closed_port()
    resolver = DnsResolver(resolver=local_resolver(port, timeout=TIMEOUT, lifetime=LIFETIME))
    started = time.monotonic()
    resolution = resolver.resolve(mx("example.test"), transcript)
    elapsed = time.monotonic() - started
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.4.3")
    assert re.fullmatch(
        rf"MX lookup for example\.test failed: timed out after [0-9.]+ s "
        rf"asking Do53:127\.0\.0\.1@{port}",
        resolution.reply.text,
    )
    assert elapsed < LIFETIME + SLACK


# --- outcomes dnsmasq cannot produce -----------------------------------------------------------


class RaisingResolver(dns.resolver.Resolver):
    """Answers every query with ``error``; sends nothing."""

    def __init__(self, error: dns.exception.DNSException) -> None:
        super().__init__(configure=False)
        self.error = error

    def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            dns.resolver.YXDOMAIN(),
            Reply(
                550,
                "5.1.2",
                "domain example.test cannot be looked up: "
                "name too long after DNAME substitution (YXDOMAIN)",
            ),
        ),
        (
            dns.exception.FormError("bad packet"),
            Reply(451, "4.4.3", "MX lookup for example.test failed: FormError: bad packet"),
        ),
        (
            dns.resolver.NoNameservers(),
            Reply(
                451,
                "4.4.3",
                "MX lookup for example.test failed: no nameserver answered "
                "(no nameservers configured)",
            ),
        ),
    ],
)
def test_every_dnspython_error_becomes_a_reply(
    error: dns.exception.DNSException, expected: Reply, transcript: Transcript
) -> None:
    resolver = DnsResolver(resolver=RaisingResolver(error))
    assert resolver.resolve(mx("example.test"), transcript).reply == expected


def test_unexpected_exceptions_are_bugs_and_propagate(transcript: Transcript) -> None:
    class Broken(dns.resolver.Resolver):
        def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        DnsResolver(resolver=Broken(configure=False)).resolve(mx("example.test"), transcript)


def test_names_are_asked_absolute_and_without_search(transcript: Transcript) -> None:
    asked: list[tuple[Any, ...]] = []

    class Recording(dns.resolver.Resolver):
        def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kwargs: Any) -> Any:
            asked.append((qname, rdtype, kwargs.get("search")))
            raise dns.resolver.NXDOMAIN

    DnsResolver(resolver=Recording(configure=False)).resolve(mx("Example.Test."), transcript)
    assert asked == [(dns.name.from_text("example.test."), "MX", False)]
    assert asked[0][0].is_absolute()
