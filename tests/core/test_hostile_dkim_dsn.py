"""Hostile inputs to DKIM signing and to the DSNs spoolmail makes: signed right, or not at all.

A signature is checked by dkimpy and, where the message is one OpenDKIM's ``opendkim-testmsg``
reads (it wants a Date field and at most one To), by OpenDKIM too (``tests/test_dkim_verify.py``
explains the namespace it runs in); a message that cannot carry a signature that verifies is sent
unsigned, with the reason, never stopped. Settings that would inject into ``DKIM-Signature`` are
ConfigurationErrors when the signer is made. A DSN quotes at most a bounded part of each reply,
whatever the remote server said and however many recipients failed; one DSN reports them all,
and a DSN to the postmaster that fails goes to BadMail, never back. The DSNs of hostile
originals are ``tests/service/test_hostile_originals.py``'s.
"""

from __future__ import annotations

import re
import time
import tracemalloc
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmail import MailService, Reply, RetryPolicy, Router, Spool
from spoolmail._core import dsn as dsn_text
from spoolmail._core.dkim import Canonicalization, DkimKey, DkimPolicy, DkimSigner
from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import Recipient, RecipientState, new_envelope
from spoolmail._core.pickup import pickup_head_end
from spoolmail.exceptions import ConfigurationError, MessageError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.service.test_hostile_originals import check_dsn
from tests.test_dkim_verify import CANONICALIZATIONS, dkimpy_verdicts, dns, opendkim, wire

KEY = DkimKey(ed25519.Ed25519PrivateKey.generate())
HEAD = b"From: a@example.com\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nSubject: s\r\n"
FQDN = "mail.example.com"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def signer(
    canonicalization: tuple[Canonicalization, Canonicalization] = CANONICALIZATIONS[0],
) -> DkimSigner:
    header, body = canonicalization
    return DkimSigner(
        KEY,
        domain="example.com",
        selector="s",
        header_canonicalization=header,
        body_canonicalization=body,
    )


def now() -> datetime:
    return datetime.now(UTC)  # verifiers refuse a t= in the future


def sign_as_the_door_does(made: DkimSigner, message: bytes, chunk: int = 7) -> bytes:
    """Head split where the Queue's door splits it, the body fed in small chunks."""
    end = pickup_head_end(message, complete=True)
    head, body = (message, b"") if end is None else (message[:end], message[end:])
    session = DkimPolicy([made]).start(head)
    for start in range(0, len(body), chunk):
        session.feed(body[start : start + chunk])
    return session.finish(now())


# -- what cannot carry a signature is sent unsigned --------------------------------------------


@pytest.mark.parametrize("first", [b" leading", b"\tleading"])
def test_a_header_section_starting_with_a_continuation_line_is_not_signed(first: bytes) -> None:
    # Put in front of it, the DKIM-Signature field would take that line as its own last one:
    # dkimpy then failed the b= it ended with.
    message = first + b"\r\n" + HEAD + b"\r\nbody\r\n"
    session = DkimPolicy([signer()]).start(message[: pickup_head_end(message, complete=True)])
    assert session.unsigned == "its header section starts with a continuation line"
    assert session.finish(now()) == b""
    with pytest.raises(MessageError, match="continuation line"):
        signer().start(message)
    # Without that line it is signed, and verifies.
    rest = message.partition(b"\r\n")[2]
    assert dkimpy_verdicts(wire(signer().sign(rest, now=now()), rest), dns(signer())) == [True]


def test_a_nul_in_the_header_section_is_not_signed() -> None:
    # RFC 5322 forbids it; OpenDKIM hashes a field only up to it and failed the signature.
    message = HEAD.replace(b"Subject: s", b"Subject: a\x00b") + b"\r\nbody\r\n"
    assert DkimPolicy([signer()]).sign(message, now=now()) == b""
    session = DkimPolicy([signer()]).start(message)
    assert session.unsigned == "its header section holds a NUL octet"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"From: a@example.com\nSubject: s\n\nbody\nmore\n", id="lf"),
        pytest.param(b"From: a@example.com\rSubject: s\r\rbody\r", id="cr"),
        pytest.param(b"From: a@example.com\r\nSubject: s\n\r\nbody\r\n", id="mixed"),
    ],
)
@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS, ids=lambda c: c[0].value)
def test_sign_splits_a_bare_line_end_message_where_the_door_does(
    message: bytes, canonicalization: tuple[Canonicalization, Canonicalization]
) -> None:
    # DkimSigner.sign and DkimPolicy.sign looked for CRLF CRLF only: the body of a message
    # written with bare line ends was signed as header fields, and nothing verified.
    made = signer(canonicalization)
    for fields in (made.sign(message, now=now()), DkimPolicy([made]).sign(message, now=now())):
        assert dkimpy_verdicts(wire(fields, message), dns(made)) == [True]
    # The same body hash as the door's, which splits at the first empty line of any line end.
    assert body_hash(made.sign(message, now=now())) == body_hash(
        sign_as_the_door_does(made, message)
    )


def body_hash(fields: bytes) -> bytes:
    return fields.split(b"bh=")[1].split(b";")[0]


# -- hostile messages that are signed verify ---------------------------------------------------

HOSTILE = {
    "8bit-invalid-utf8-value": HEAD + b"X-A: \xff\xfe\x80 x\r\nTo: \xc3(\r\n\r\nbody\r\n",
    "nul-and-bare-cr-in-body": HEAD + b"\r\nbo\x00dy\rx\r\r\n\n\r",
    "empty-body": HEAD + b"\r\n",
    "no-final-crlf": HEAD + b"\r\nbody without a line end",
    "white-space-only-body": HEAD + b"\r\n \t \r\n\t\r\n  ",
    "dot-lines": HEAD + b"\r\n.\r\n..\r\n.x",
    "3000-unsigned-fields": HEAD + b"X-Many: b@example.net\r\n" * 3000 + b"\r\nbody\r\n",
    "1-mib-folded-unsigned-field": HEAD + b"X-Big: " + b"word\r\n " * 150_000 + b"end\r\n\r\nx\r\n",
    "60-kib-folded-subject": HEAD.replace(b"Subject: s", b"Subject: " + b"word\r\n " * 9000)
    + b"\r\nx\r\n",
    "white-space-continuations": HEAD + b"X-A: a\r\n \r\n\tb \t \r\n \t\r\n\r\nx\r\n",
}


@pytest.mark.parametrize("message", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS, ids=lambda c: c[0].value)
def test_hostile_messages_are_signed_so_that_dkimpy_verifies(
    message: bytes, canonicalization: tuple[Canonicalization, Canonicalization]
) -> None:
    made = signer(canonicalization)
    fields = sign_as_the_door_does(made, message)
    assert fields.startswith(b"DKIM-Signature: ")
    assert dkimpy_verdicts(wire(fields, message), dns(made)) == [True]


@pytest.mark.integration
@pytest.mark.parametrize("message", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_messages_are_signed_so_that_opendkim_verifies(
    message: bytes, tmp_path: Path
) -> None:
    made = signer()
    assert opendkim(wire(sign_as_the_door_does(made, message), message), [made], tmp_path) == (
        0,
        "",
    )


@pytest.mark.slow
def test_a_100_mb_body_is_signed_in_flat_memory() -> None:
    chunk = (b"0123456789 abcdefghij \t KLMNOPQRST.,;:-_!?  " * 20 + b"\r\n") * 70  # ~64 KiB
    count = 100 * 1024 * 1024 // len(chunk) + 1
    made = [signer(c) for c in CANONICALIZATIONS[:2]]
    session = DkimPolicy([made[0], DkimSigner(KEY, domain="example.com", selector="t",
                          body_canonicalization=Canonicalization.SIMPLE)]).start(HEAD)  # fmt: skip
    tracemalloc.start()
    try:
        for _ in range(count):
            session.feed(chunk)
        fields = session.finish(now())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(chunk), peak
    assert fields.count(b"DKIM-Signature:") == 2


# -- settings that would inject into the DKIM-Signature field ----------------------------------


@pytest.mark.parametrize("name", ["x;b=evil", ";", "to;"])
def test_a_header_name_with_a_semicolon_is_refused(name: str) -> None:
    # "h=from:x;b=evil" would end the h= tag and start a second b= (RFC 6376 section 3.2).
    with pytest.raises(ConfigurationError, match="is not a header field name"):
        DkimSigner(KEY, domain="example.com", selector="s", headers=["from", name],
                   oversign=["from"])  # fmt: skip


@pytest.mark.parametrize("name", ["x=y", "X-Odd!#$%&'*+-.^_`|~"])
def test_odd_but_valid_header_names_are_kept(name: str) -> None:
    made = DkimSigner(KEY, domain="example.com", selector="s", headers=["from", name],
                      oversign=["from"])  # fmt: skip
    assert name.lower() in made.headers


@pytest.mark.parametrize(
    "selector", ["s;x=1", "s=x", "s\r\nx", "s\n", "sé", "s_t", "", "-s", "s..t", "a" * 64]
)
def test_a_selector_that_is_not_a_dns_name_is_refused(selector: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a DKIM selector"):
        DkimSigner(KEY, domain="example.com", selector=selector)


def test_a_selector_label_may_have_63_octets() -> None:
    assert DkimSigner(KEY, domain="example.com", selector="a" * 63 + ".b").selector.startswith("a")


@pytest.mark.parametrize(
    "domain",
    ["example.com;s=evil", "ex=ample.com", "example.com\r\n", "exa mple.com", "[192.0.2.1]", ""],
)
def test_a_domain_that_would_inject_is_refused(domain: str) -> None:
    with pytest.raises(ConfigurationError, match="DKIM domain"):
        DkimSigner(KEY, domain=domain, selector="s")


# -- DSNs: bounded, whatever the recipients and the replies ------------------------------------


def test_a_dsn_quotes_a_bounded_part_of_each_reply() -> None:
    # The transport takes replies of up to 64 KiB; a DATA refusal gives the same one to every
    # recipient. 200 such recipients made a DSN of 29 MB in 9 s; 10,000 would make 1.3 GB.
    text = "no such user " + "x " * 32 * 1024
    reply = Reply(550, "5.1.1", text, host="mx.remote.test")
    envelope = new_envelope("abc", sender="a@example.com", recipients=["b@r.test"], now=NOW,
                            origin="smtp:192.0.2.7")  # fmt: skip
    recipients = [
        Recipient(f"user{n}@remote.test", RecipientState.FAILED, reply) for n in range(2000)
    ]
    started = time.perf_counter()
    raw = render_dsn(
        envelope=envelope,
        recipients=recipients,
        action=DsnAction.FAILED,
        original=HEAD + b"\r\nbody\r\n",
        reporting_mta=FQDN,
        dsn_id="abc-d1",
        now=NOW,
    )
    assert time.perf_counter() - started < 30
    assert len(raw) < 2000 * 6 * 1024  # two quotes of at most 2 KiB each, and the fields
    dsn = check_dsn(raw)
    blocks = list(dsn.iter_parts())[1].get_payload()
    assert isinstance(blocks, list)
    assert len(blocks) == 2001  # one per recipient, all reported
    diagnostic = " ".join(str(blocks[1]["Diagnostic-Code"]).split())
    assert diagnostic.startswith("smtp; 550 5.1.1 no such user x x")
    assert diagnostic.endswith(" [...]")


@pytest.mark.parametrize(("length", "cut"), [(2048, False), (2049, True)])
def test_a_reply_is_quoted_whole_up_to_2048_characters(length: int, cut: bool) -> None:
    text = "y" * (length - len("550 5.1.1 "))  # str(reply) is "550 5.1.1 yyy..."
    reply = Reply(550, "5.1.1", text, host="mx.remote.test")
    envelope = new_envelope("abc", sender="a@example.com", recipients=["b@r.test"], now=NOW,
                            origin="t")  # fmt: skip
    raw = render_dsn(
        envelope=envelope,
        recipients=[Recipient("b@r.test", RecipientState.FAILED, reply)],
        action=DsnAction.FAILED,
        original=HEAD,
        reporting_mta=FQDN,
        dsn_id="abc-d1",
        now=NOW,
    )
    assert (b"[...]" in raw) is cut
    quoted = sum(len(run) for run in re.findall(rb"y{9,}", b"".join(raw.split(b"\r\n "))))
    assert quoted == 2 * min(length - 10, 2048 - 10)  # in both parts, folded


def make_service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> MailService:
    return MailService(
        spool,
        transport=transport,
        clock=clock,
        fqdn=FQDN,
        router=Router(local_domains=["local.test"], smart_host="relay.test:2525"),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        retry=RetryPolicy.iis(),
    )


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(tmp_path / "MailRoot", clock=clock) as spool:
        yield spool


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_thousands_of_failed_recipients_give_one_dsn_with_a_bounded_about(
    spool: Spool, clock: FakeClock
) -> None:
    # The DSN's envelope said what it reports, every recipient with its reply: 1000 replies of
    # 60 KB made an envelope of 60 MB, read at every claim. Its BadMail report shows it here.
    big = Reply(554, "5.7.1", "refused " + "y" * 60_000, host="relay.test")
    transport = CapturingTransport(lambda address: big)
    recipients = [f"user{n}@remote.test" for n in range(1000)]
    spool.admit(HEAD + b"\r\nbody\r\n", sender="alice@example.com", recipients=recipients,
                origin="smtp:192.0.2.7")  # fmt: skip
    service = make_service(spool, transport, clock)
    try:
        report = service.run_once()
        assert report.errors == ()
        [dsn_id] = report.dsns
    finally:
        service.close()
    assert list(spool.queued()) == []
    [item] = spool.badmail()  # the DSN, refused too
    assert item.id == dsn_id
    about = item.report.split("It was the ", 1)[1].split("\n", 1)[0]
    assert about.startswith("failed notice for ")
    assert about.endswith("; and 997 more")
    assert "<user0@remote.test>: 554 5.7.1 refused" in about
    assert len(about) < 1200


def test_a_failed_dsn_to_our_own_postmaster_goes_to_badmail_not_round(
    spool: Spool, clock: FakeClock
) -> None:
    # The sender is the DSN's own From (postmaster@FQDN), and every relay refuses: the DSN to
    # it fails too, has the null sender, and goes to BadMail; nothing is answered again.
    asked: list[str] = []

    def refuse(address: str) -> Reply:
        asked.append(address)
        return Reply(550, "5.1.1", "no", host="relay.test")

    transport = CapturingTransport(refuse)
    spool.admit(HEAD + b"\r\nbody\r\n", sender=f"postmaster@{FQDN}", recipients=["b@remote.test"],
                origin="smtp:192.0.2.7")  # fmt: skip
    service = make_service(spool, transport, clock)
    try:
        for _ in range(5):
            report = service.run_once()
            assert report.errors == ()
            clock.advance(hours=5)
    finally:
        service.close()
    assert asked == ["b@remote.test", f"postmaster@{FQDN}"]  # the DSN, tried once
    assert list(spool.queued()) == []
    [item] = spool.badmail()
    assert item.id.endswith("-d1")


# -- the DSN's text: the fast paths write what the plain definitions write --------------------


def _reference_clean(text: str) -> str:
    """``_clean`` as defined: every unsafe character a space, white space runs one space."""
    unsafe = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    spaced = "".join(" " if unicodedata.category(c) in unsafe else c for c in text)
    return " ".join(spaced.split())


def _reference_wrap(text: str, *, first: str, indent: str) -> list[str]:
    """``_wrap`` as defined: word by word, each one placed where it fits."""
    lines: list[str] = []
    line = first
    for piece in (p for word in text.split(" ") for p in dsn_text._pieces(word)):
        if line in (first, indent):
            line += piece
        elif (
            len(line.encode("utf-8", "surrogatepass"))
            + 1
            + len(piece.encode("utf-8", "surrogatepass"))
            <= 78
        ):
            line += " " + piece
        else:
            lines.append(line)
            line = indent + piece
    lines.append(line.rstrip())
    return lines


# The prefixes the DSN fills lines with: the human part's, a header's, a field's.
_PREFIXES = st.sampled_from(
    [("", ""), ("       ", "       "), ("           ", "           "), ("To: ", " "),
     ("Diagnostic-Code: ", " "), ("Original-Envelope-Id: ", " ")]
)  # fmt: skip
_WORDS = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="ascii", exclude_characters=" "), max_size=12),
        st.text(alphabet="xy", min_size=60, max_size=1000),
        st.text(max_size=8),
        st.sampled_from(["\r\n", "\x00", "\x85", "\u2028", "\u202e", "\t", "  "]),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(_WORDS, _PREFIXES, st.sampled_from([" ", "  ", "\t", "\r\n "]))
def test_cleaning_and_filling_write_what_the_definitions_write(
    words: list[str], prefixes: tuple[str, str], between: str
) -> None:
    """``_clean`` and ``_wrap`` take a DSN's text a run or a line at a time (10,000 replies of
    2 KiB took 16 s a character and a word at a time): their lines are the same."""
    first, indent = prefixes
    text = between.join(words)
    assert dsn_text._clean(text) == _reference_clean(text)
    for given_text in (text, dsn_text._clean(text)):
        assert dsn_text._wrap(given_text, first=first, indent=indent) == _reference_wrap(
            given_text, first=first, indent=indent
        )


@pytest.mark.parametrize("width", [76, 77, 78, 79, 80])
def test_filling_at_the_edge_of_a_line(width: int) -> None:
    # A word that ends exactly at the 78th octet stays; one octet more goes to the next line.
    text = "a" * (width - len("To: ") - 2) + " bb cc " + "d" * 900 + " " + "e" * 901
    assert dsn_text._wrap(text, first="To: ", indent=" ") == _reference_wrap(
        text, first="To: ", indent=" "
    )
