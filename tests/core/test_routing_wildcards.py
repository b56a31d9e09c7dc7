"""Wildcard routes: IIS's remote domains ``*.example.com``, every subdomain but not the domain."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.routing import (
    Hop,
    HopKind,
    Route,
    RouteKind,
    Router,
    TlsPolicy,
    _closest_wildcard,
)
from spoolmail.exceptions import ConfigurationError


def hop_of(router: Router, address: str) -> str:
    """The first hop's words (``[192.0.2.1]:25``, ``MX of example.com``), or ``local``."""
    route = router.route(address)
    if route.kind is RouteKind.LOCAL:
        return "local"
    return str(route.hops[0])


CORP = {
    "*.corp.example": "[192.0.2.1]",
    "*.eu.corp.example": "[192.0.2.2]",
    "lab.eu.corp.example": "[192.0.2.3]",
    "corp.example": "[192.0.2.4]",
}


@pytest.mark.parametrize(
    ("address", "hop"),
    [
        ("a@mail.corp.example", "[192.0.2.1]:25"),
        ("a@x.y.z.corp.example", "[192.0.2.1]:25"),  # any depth
        ("a@eu.corp.example", "[192.0.2.1]:25"),  # *.eu.corp.example is not eu.corp.example
        ("a@paris.eu.corp.example", "[192.0.2.2]:25"),  # the longest suffix wins
        ("a@rack.paris.eu.corp.example", "[192.0.2.2]:25"),
        ("a@lab.eu.corp.example", "[192.0.2.3]:25"),  # an exact key beats any wildcard
        ("a@bench.lab.eu.corp.example", "[192.0.2.2]:25"),  # exact keys cover no subdomain
        ("a@corp.example", "[192.0.2.4]:25"),  # the apex by its own key only
        ("a@othercorp.example", "MX of othercorp.example"),  # a suffix of labels, not of text
        ("a@corp.example.net", "MX of corp.example.net"),
    ],
)
def test_the_most_specific_route_wins(address: str, hop: str) -> None:
    assert hop_of(Router(routes=CORP), address) == hop


def test_the_apex_is_not_matched() -> None:
    """Postfix's transport(5) ``.example.com`` as installed, and a DNS wildcard (RFC 4592)."""
    router = Router(routes={"*.partner.example": "[192.0.2.7]:2525"})
    assert hop_of(router, "ann@partner.example") == "MX of partner.example"
    assert hop_of(router, "ann@www.partner.example") == "[192.0.2.7]:2525"


def test_deep_subdomains_up_to_the_longest_domain() -> None:
    router = Router(routes={"*.a": "[192.0.2.7]"})
    deepest = ".".join(["b"] * 126 + ["a"])  # 127 labels, 253 octets
    assert len(deepest) == 253
    assert hop_of(router, f"x@{deepest}") == "[192.0.2.7]:25"


@pytest.mark.parametrize("key", ["*.Partner.EXAMPLE", "*.partner.example.", " *.partner.example "])
@pytest.mark.parametrize(
    "domain", ["mail.partner.example", "MAIL.Partner.Example", "mail.partner.example."]
)
def test_case_and_final_dots_do_not_matter(key: str, domain: str) -> None:
    router = Router(routes={key: "[192.0.2.7]"})
    assert set(router.routes) == {"*.partner.example"}
    assert hop_of(router, f"ann@{domain}") == "[192.0.2.7]:25"


@pytest.mark.parametrize("key", ["*.bücher.example", "*.xn--bcher-kva.example"])
@pytest.mark.parametrize("domain", ["mail.bücher.example", "mail.xn--bcher-kva.example"])
def test_unicode_and_ascii_labels_are_one_domain(key: str, domain: str) -> None:
    """RFC 5890 section 2.3.2.1, as for exact keys: the U-label and the A-label match alike."""
    router = Router(routes={key: "[192.0.2.7]"})
    assert hop_of(router, f"ann@{domain}") == "[192.0.2.7]:25"
    assert hop_of(router, f"ann@{domain.partition('.')[2]}").startswith("MX of ")


def test_a_local_domain_beats_a_wildcard_route() -> None:
    router = Router(local_domains=["mail.corp.example"], routes={"*.corp.example": "[192.0.2.7]"})
    assert hop_of(router, "ann@mail.corp.example") == "local"
    assert hop_of(router, "ann@web.corp.example") == "[192.0.2.7]:25"
    capture = Router(catch_all=True, routes={"*.corp.example": "[192.0.2.7]"})
    assert hop_of(capture, "ann@web.corp.example") == "local"


def test_a_wildcard_route_takes_the_domains_tls_policy() -> None:
    router = Router(
        routes={"*.bank.example": "relay.bank.example:2525"},
        tls_domains={"eu.bank.example": "required"},
    )
    assert router.route("a@eu.bank.example") == Route(
        RouteKind.SMTP, (Hop(HopKind.HOST, "relay.bank.example", 2525, tls=TlsPolicy.REQUIRED),)
    )
    assert router.route("a@us.bank.example").hops[0].tls is TlsPolicy.OPPORTUNISTIC


class CountingMapping(Mapping[str, Hop]):
    """A mapping that counts how often it is read, to show a lookup walks labels, not routes."""

    def __init__(self, items: dict[str, Hop]) -> None:
        self.items_ = items
        self.reads = 0

    def __getitem__(self, key: str) -> Hop:
        self.reads += 1
        return self.items_[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += len(self.items_)
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_a_lookup_asks_once_per_parent_domain_however_many_routes() -> None:
    hop = Hop(HopKind.ADDRESS, "192.0.2.7")
    wildcards = CountingMapping({f"d{n}.example": hop for n in range(10_000)})
    assert _closest_wildcard("a.b.c.d.example", wildcards) is None
    assert wildcards.reads == 4  # b.c.d.example, c.d.example, d.example, example
    wildcards.reads = 0
    assert _closest_wildcard("x.y.d7.example", wildcards) is hop
    assert wildcards.reads == 2  # y.d7.example, d7.example


@pytest.mark.parametrize(
    "key",
    [
        "*",
        "*.",
        "a.*.com",
        "*example.com",
        "**.x",
        "*.*.example",
        "*..example",
        "example.*",
        "*.[192.0.2.1]",
        ".partner.example",  # Postfix's spelling: pointed to ours
    ],
)
def test_other_wildcards_are_refused_naming_the_setting_and_value(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Router(routes={key: "[192.0.2.7]"})
    assert str(info.value) == (
        f"routes: {key!r} is not a domain (a wildcard route is '*.' and a domain name, as "
        "'*.example.com' for its subdomains)"
    )


@pytest.mark.parametrize("setting", ["local_domains", "alias_domains"])
def test_local_domains_take_no_wildcard_but_catch_all(setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Router(**{setting: ["*.example.com"]})  # type: ignore[arg-type]
    assert str(info.value) == (
        f"{setting}: '*.example.com' is not a domain (wildcards are not supported; "
        "catch_all=True sends every recipient to Drop)"
    )


def test_a_wildcard_tls_domain_covers_the_subdomains_as_a_route_does() -> None:
    """IIS's wildcard remote domain carried its Outbound Security too: ``tls_domains`` takes
    ``*.bank.example`` by the same rules as ``routes`` (exact first, then the longest, never
    the apex), for MX delivery and through a wildcard route alike."""
    router = Router(
        routes={"*.bank.example": "relay.bank.example:2525"},
        tls_domains={
            "*.bank.example": "required",
            "*.test.bank.example": "never",
            "open.test.bank.example": "opportunistic",
            "*.mx.example": "encrypt",
        },
    )

    def tls(address: str) -> TlsPolicy:
        return router.route(address).hops[0].tls

    assert tls("a@eu.bank.example") is TlsPolicy.REQUIRED
    assert tls("a@x.y.eu.bank.example") is TlsPolicy.REQUIRED
    assert tls("a@qa.test.bank.example") is TlsPolicy.NEVER  # the longest wildcard
    assert tls("a@open.test.bank.example") is TlsPolicy.OPPORTUNISTIC  # the exact key
    assert tls("a@bank.example") is TlsPolicy.OPPORTUNISTIC  # not the apex: the default
    assert router.route("a@in.mx.example").hops == (
        Hop(HopKind.MX, "in.mx.example", 25, tls=TlsPolicy.ENCRYPT),
    )
    assert tls("a@mx.example") is TlsPolicy.OPPORTUNISTIC


@pytest.mark.parametrize("key", ["*", "a.*.bank.example", "*bank.example", ".bank.example"])
def test_a_tls_domain_wildcard_other_than_a_first_label_is_refused(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Router(tls_domains={key: "required"})
    assert str(info.value) == (
        f"tls_domains: {key!r} is not a domain (a wildcard is '*.' and a domain name, as "
        "'*.example.com' for its subdomains)"
    )


def test_a_route_to_the_mx_of_a_wildcard_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"routes\['\*\.a\.example'\]: '\*\.b\.example'"):
        Router(routes={"*.a.example": Hop(HopKind.MX, "*.b.example")})


# Few labels, so that generated domains and route keys meet often; "a" ends "ba" and the A-label
# (a suffix of text, not of labels), and "bücher" and its A-label are one label to the router.
_LABELS = st.sampled_from(["a", "ba", "b", "Mail", "bücher", "xn--bcher-kva"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=5).map(".".join)


def _reference_key(domain: str) -> str:
    """A domain as compared, worked out apart from the router: IDNA's ToASCII for each label."""
    return ".".join(label.lower().encode("idna").decode("ascii") for label in domain.split("."))


def _reference_route(domain: str, keys: Mapping[str, str]) -> str | None:
    """Brute force: the exact key, else the wildcard with the longest suffix, else none."""
    wanted = _reference_key(domain)
    exact = [hop for key, hop in keys.items() if _reference_key(key) == wanted]
    if exact:
        return exact[0]
    wild = [
        (len(_reference_key(key[2:])), hop)
        for key, hop in keys.items()
        if key.startswith("*.") and wanted.endswith("." + _reference_key(key[2:]))
    ]
    return max(wild, key=lambda found: found[0])[1] if wild else None


@given(
    keys=st.lists(st.tuples(st.booleans(), _NAMES), max_size=8),
    data=st.data(),
    final_dot=st.booleans(),
)
def test_the_route_is_the_brute_force_one(
    keys: list[tuple[bool, str]], data: st.DataObject, final_dot: bool
) -> None:
    # Any domain, or often one of the keys' own with labels before it: an apex, a subdomain.
    near = [
        st.tuples(st.lists(_LABELS, max_size=2), st.sampled_from([n for _, n in keys])).map(
            lambda labels_name: ".".join([*labels_name[0], labels_name[1]])
        )
    ]
    domain = data.draw(st.one_of(_NAMES, *(near if keys else [])))
    # One key per domain as compared: two spellings of one (case, U-label) are a conflict the
    # reference need not settle.
    routes: dict[str, str] = {}
    seen = set()
    for number, (wild, name) in enumerate(keys, start=1):
        if (wild, _reference_key(name)) not in seen:
            seen.add((wild, _reference_key(name)))
            routes[("*." if wild else "") + name] = f"[192.0.2.{number}]"
    expected = _reference_route(domain, routes)
    found = hop_of(Router(routes=routes), f"ann@{domain}{'.' if final_dot else ''}")
    assert found == (f"{expected}:25" if expected else f"MX of {domain.lower()}")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("Partner.Example", "partner.example."),
        ("*.Corp.example", "*.corp.example"),
    ],
)
@pytest.mark.parametrize("setting", ["routes", "tls_domains"])
def test_two_spellings_of_one_domain_are_refused(first: str, second: str, setting: str) -> None:
    """Two keys naming one domain (case, a final dot, a U-label and its A-label): one of them
    silently won. Guard: a wildcard and its apex are two keys, as they match apart."""
    value = "[192.0.2.7]" if setting == "routes" else "required"
    with pytest.raises(ConfigurationError) as info:
        Router(**{setting: {first: value, second: value}})
    assert str(info.value) == (
        f"{setting}: {first!r} and {second!r} name the same domain; keep one"
    )
    Router(**{setting: {"*.corp.example": value, "corp.example": value}})
