"""DKIM signing, pure: canonicalization, the fields signed, folding, streaming, keys, refusals.

Signatures are checked here against hand-written canonical data and the key's public half;
tests/test_dkim_verify.py has dkimpy and OpenDKIM verify them.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.dkim import (
    OVERSIGNED_FIELDS,
    SIGNED_FIELDS,
    BodyCanonicalizer,
    Canonicalization,
    DkimAlgorithm,
    DkimKey,
    DkimPolicy,
    DkimSigner,
    canonicalize_field,
    zone_line,
)
from spoolmail.exceptions import ConfigurationError, DependencyError, MessageError

SIMPLE, RELAXED = Canonicalization.SIMPLE, Canonicalization.RELAXED
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SEED = bytes(range(32))  # a fixed Ed25519 key: its signatures are deterministic
HEAD = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
)
BODY = b"Noon at the usual place?\r\n\r\n-- \r\nAlice\r\n"
MESSAGE = HEAD + b"\r\n" + BODY


@pytest.fixture(scope="module")
def ed_key() -> DkimKey:
    return DkimKey(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return DkimKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ed_signer(key: DkimKey, **options: object) -> DkimSigner:
    arguments: dict[str, object] = {"domain": "example.com", "selector": "ed", **options}
    return DkimSigner(key, **arguments)  # type: ignore[arg-type]


def tags(field: bytes) -> dict[str, str]:
    """The tags of a DKIM-Signature field, unfolded, white space removed from values."""
    _, _, value = field.decode("ascii").partition(":")
    value = re.sub(r"\r\n[ \t]", " ", value)
    pairs = (part.split("=", 1) for part in value.split(";") if part.strip())
    return {name.strip(): re.sub(r"\s+", "", text) for name, text in pairs}


def relaxed_without_b(field: bytes) -> bytes:
    """RFC 6376 section 3.7 by hand: b= emptied, relaxed, no final CRLF (only ours: b= last)."""
    head, _, _ = field.rpartition(b"b=")
    text = re.sub(rb"\r\n(?=[ \t])", b"", head + b"b=")
    name, _, value = text.partition(b":")
    return name.lower() + b":" + re.sub(rb"[ \t]+", b" ", value).strip()


def ed_verifies(key: DkimKey, field: bytes, signed: bytes) -> bool:
    public = key.private_key.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    digest = hashlib.sha256(signed + relaxed_without_b(field)).digest()
    try:
        public.verify(base64.b64decode(tags(field)["b"]), digest)
    except Exception:  # noqa: BLE001 (InvalidSignature, whatever its module)
        return False
    return True


# -- canonicalization (RFC 6376 section 3.4) ---------------------------------------------------


def body(how: Canonicalization, data: bytes, *, chunk: int | None = None) -> bytes:
    canonicalizer = BodyCanonicalizer(how)
    size = chunk or max(len(data), 1)
    parts = [canonicalizer.feed(data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + canonicalizer.finish()


def test_rfc_6376_section_3_4_5_example() -> None:
    fields = [b"A: X\r\n", b"B : Y\t\r\n\tZ  \r\n"]
    data = b" C \r\nD \t E\r\n\r\n\r\n"
    assert [canonicalize_field(f, RELAXED) for f in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert body(RELAXED, data) == b" C\r\nD E\r\n"
    assert [canonicalize_field(f, SIMPLE) for f in fields] == fields
    assert body(SIMPLE, data) == b" C \r\nD \t E\r\n"


def test_empty_body_is_crlf_for_simple_and_nothing_for_relaxed() -> None:
    assert body(SIMPLE, b"") == b"\r\n"
    assert body(RELAXED, b"") == b""
    # The bh= values every verifier computes for an empty body.
    assert base64.b64encode(hashlib.sha256(body(SIMPLE, b"")).digest()) == (
        b"frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
    )
    assert base64.b64encode(hashlib.sha256(body(RELAXED, b"")).digest()) == (
        b"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    )


@pytest.mark.parametrize(
    ("data", "simple", "relaxed"),
    [
        (b"no line end", b"no line end\r\n", b"no line end\r\n"),
        (b"text\r\n\r\n\r\n", b"text\r\n", b"text\r\n"),
        (b"\r\n\r\n", b"\r\n", b""),
        (b" \t \r\n\r\n", b" \t \r\n", b""),
        (b"a\r\n \r\nb  ", b"a\r\n \r\nb  \r\n", b"a\r\n\r\nb\r\n"),
        (b"a \r\n\r\n \t\r\n", b"a \r\n\r\n \t\r\n", b"a\r\n"),
        (b"\tlead", b"\tlead\r\n", b" lead\r\n"),
        # A bare LF or CR ends a line, as the SMTP transport sends it (RFC 5321 section 2.3.8).
        (b"a\nb\rc\r", b"a\r\nb\r\nc\r\n", b"a\r\nb\r\nc\r\n"),
        (b"a\n\n", b"a\r\n", b"a\r\n"),
        (b"a\r\r\n", b"a\r\n", b"a\r\n"),
    ],
)
def test_body_edges(data: bytes, simple: bytes, relaxed: bytes) -> None:
    assert body(SIMPLE, data) == simple
    assert body(RELAXED, data) == relaxed
    assert body(SIMPLE, data, chunk=1) == simple
    assert body(RELAXED, data, chunk=1) == relaxed


def reference(how: Canonicalization, data: bytes) -> bytes:
    """Section 3.4.3 and 3.4.4 as written, on the whole body at once."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if how is RELAXED:
        lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    text = b"\r\n".join(lines)
    while text.endswith(b"\r\n"):
        text = text[:-2]
    if how is RELAXED and not text:
        return b""
    return text + b"\r\n"


BODY_PARTS = st.lists(
    st.sampled_from([b" ", b"\t", b"  ", b"\r", b"\n", b"\r\n", b"a", b"b.", b"\xc3\xa9", b"x y"]),
    max_size=40,
).map(b"".join)


@given(data=BODY_PARTS, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
@pytest.mark.parametrize("how", list(Canonicalization))
def test_streamed_body_equals_the_rfc_text_wherever_it_is_cut(
    how: Canonicalization, data: bytes, cuts: list[int]
) -> None:
    canonicalizer = BodyCanonicalizer(how)
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    out = b"".join(canonicalizer.feed(data[a:b]) for a, b in itertools.pairwise(points))
    assert out + canonicalizer.finish() == reference(how, data)


def test_relaxed_field_non_ascii_kept_as_bytes() -> None:
    raw = "Subject:   Grüße \t aus\r\n  Köln  \r\n".encode()
    assert canonicalize_field(raw, RELAXED) == "subject:Grüße aus Köln\r\n".encode()


# -- the signature field ------------------------------------------------------------------------


def test_golden_ed25519_field(ed_key: DkimKey) -> None:
    """Ed25519 signatures are deterministic: any change to what is hashed or written shows."""
    field = ed_signer(ed_key).sign(MESSAGE, now=NOW)
    assert field == (
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=ed;\r\n"
        b" t=1795860000; h=from:from:to:to:subject:subject:date:message-id:\r\n"
        b" list-unsubscribe:list-unsubscribe-post;\r\n"
        b" bh=aBa4l95QcwO7RYLDxwn3aaGBr9K+5mYfpbDc7Vage7E=; b=slNHdwH3vpoFFtS7qev70toetT\r\n"
        b" E4shHxSlw5c+auRqc/q36kGNpbmCjEqV1vXFvSazsk8zf39HxP+etA8sAHBw==\r\n"
    )
    assert tags(field)["bh"] == base64.b64encode(
        hashlib.sha256(body(RELAXED, BODY)).digest()
    ).decode("ascii")
    signed = (
        b"from:Alice <alice@example.com>\r\nto:bob@example.net\r\nsubject:Lunch\r\n"
        b"date:Sat, 28 Nov 2026 10:00:00 +0000\r\nmessage-id:<1@example.com>\r\n"
    )
    assert ed_verifies(ed_key, field, signed)
    assert not ed_verifies(ed_key, field, signed.replace(b"Lunch", b"Dinner"))


def test_instances_are_signed_from_the_bottom_up_and_oversigned(ed_key: DkimKey) -> None:
    head = b"From: a@example.com\r\nX-A: 1\r\nTo: b@example.net\r\nX-A: 2\r\nTo: c@example.net\r\n"
    signer = ed_signer(ed_key, headers=("From", "X-A", "To"), oversign=("from", "to"))
    session = signer.start(head)
    field = session.finish(NOW)
    assert tags(field)["h"] == "from:from:x-a:x-a:to:to:to"
    signed = b"from:a@example.com\r\nx-a:2\r\nx-a:1\r\nto:c@example.net\r\nto:b@example.net\r\n"
    assert ed_verifies(ed_key, field, signed)


def test_absent_fields_are_not_listed_unless_oversigned(ed_key: DkimKey) -> None:
    field = ed_signer(ed_key).start(b"From: a@example.com\r\nCc: c@example.net\r\n").finish(NOW)
    assert tags(field)["h"].split(":") == [
        "from",
        "from",
        "to",
        "cc",
        "subject",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ]


def test_tags_time_and_expiry(ed_key: DkimKey) -> None:
    field = ed_signer(ed_key, expire_after=timedelta(days=7)).sign(MESSAGE, now=NOW)
    found = tags(field)
    assert found["t"] == str(int(NOW.timestamp()))
    assert int(found["x"]) - int(found["t"]) == 7 * 86_400
    assert (found["v"], found["a"], found["c"], found["d"], found["s"]) == (
        "1",
        "ed25519-sha256",
        "relaxed/relaxed",
        "example.com",
        "ed",
    )
    assert "l" not in found  # section 8.2: never a body length
    assert "x" not in tags(ed_signer(ed_key).sign(MESSAGE, now=NOW))


def test_simple_canonicalization_is_named(ed_key: DkimKey) -> None:
    signer = ed_signer(ed_key, header_canonicalization=SIMPLE, body_canonicalization=SIMPLE)
    field = signer.sign(MESSAGE, now=NOW)
    assert tags(field)["c"] == "simple/simple"
    assert tags(field)["bh"] == base64.b64encode(hashlib.sha256(BODY).digest()).decode()


def test_folded_at_78_columns(rsa_key: DkimKey) -> None:
    long_head = HEAD + b"List-Unsubscribe: <https://example.com/u>\r\nList-Id: <l.example.com>\r\n"
    for key in (rsa_key, DkimKey(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))):
        field = DkimSigner(key, domain="example.com", selector="s2026").sign(
            long_head + b"\r\n" + BODY, now=NOW
        )
        assert field.startswith(b"DKIM-Signature: ")
        assert field.endswith(b"\r\n")
        lines = field[:-2].split(b"\r\n")
        assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
        assert all(line.startswith(b" ") for line in lines[1:])
        assert all(line.strip() for line in lines)
    assert len(base64.b64decode(tags(field)["b"])) == 64


def test_rsa_signature_is_pkcs1_sha256_over_the_header_hash(rsa_key: DkimKey) -> None:
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import padding  # noqa: PLC0415

    field = (
        DkimSigner(rsa_key, domain="example.com", selector="r")
        .start(b"From: a@example.com\r\n")
        .finish(NOW)
    )
    assert tags(field)["a"] == "rsa-sha256"
    public = rsa_key.private_key.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    data = b"from:a@example.com\r\n" + relaxed_without_b(field)
    public.verify(base64.b64decode(tags(field)["b"]), data, padding.PKCS1v15(), hashes.SHA256())


# -- streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["ed_key", "rsa_key"])
@pytest.mark.parametrize("how", list(Canonicalization))
def test_chunk_size_does_not_change_the_signature(
    key_name: str, how: Canonicalization, request: pytest.FixtureRequest
) -> None:
    key = request.getfixturevalue(key_name)
    signer = DkimSigner(
        key, domain="example.com", selector="s", header_canonicalization=how,
        body_canonicalization=how,
    )  # fmt: skip
    text = b"line with  trailing space \t\r\n" * 3000 + b"\r\n\r\n" + b"x" * 70_000 + b"\r\n \r\n"
    results = set()
    for size in (len(text), 1, 64 * 1024, 7):
        session = signer.start(HEAD)
        for start in range(0, len(text), size):
            session.feed(text[start : start + size])
        results.add(session.finish(NOW))
    assert len(results) == 1


def test_memory_does_not_grow_with_the_body(ed_key: DkimKey) -> None:
    chunk = (b"0123456789 abcdefghij \t KLMNOPQRST.,;:-_!?  " * 20 + b"\r\n") * 70  # ~64 KiB
    count = 20 * 1024 * 1024 // len(chunk) + 1  # 20 MB

    def chunks() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    session = DkimPolicy([ed_signer(ed_key), ed_signer(ed_key, body_canonicalization=SIMPLE,
                          selector="ed2")]).start(HEAD)  # fmt: skip
    tracemalloc.start()
    try:
        for part in chunks():
            session.feed(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(chunk), peak  # a few chunk-sized buffers, whatever the body's size
    assert session.finish(NOW).count(b"DKIM-Signature:") == 2


def test_a_session_is_used_once(ed_key: DkimKey) -> None:
    session = ed_signer(ed_key).start(HEAD)
    session.finish(NOW)
    with pytest.raises(RuntimeError):
        session.feed(b"more")
    with pytest.raises(RuntimeError):
        session.finish(NOW)


def test_the_clock_must_be_aware(ed_key: DkimKey) -> None:
    with pytest.raises(ValueError, match="aware"):
        ed_signer(ed_key).start(HEAD).finish(datetime(2026, 11, 28))  # noqa: DTZ001


# -- refusals and the policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"To: b@example.net\r\n", "no From field"),
        (b"From: a@example.com\r\nFrom: x@example.com\r\n", "2 From fields"),
    ],
)
def test_without_exactly_one_from_nothing_is_signed(
    ed_key: DkimKey, head: bytes, reason: str
) -> None:
    with pytest.raises(MessageError, match=reason):
        ed_signer(ed_key).start(head)
    session = DkimPolicy([ed_signer(ed_key)]).start(head)
    assert session.unsigned is not None
    assert reason in session.unsigned
    session.feed(b"body\r\n")
    assert session.finish(NOW) == b""


@pytest.mark.parametrize(
    ("author", "unsigned"),
    [
        ("Alice <alice@example.com>", None),
        ("ALICE@EXAMPLE.COM", None),
        ('"Team, Example" <team@example.com>, bob@example.com', None),
        ("=?utf-8?q?J=C3=B6rg?= <j@example.com>", None),
        ("alice@mail.example.com", "no DKIM key for mail.example.com"),  # no subdomains
        ("alice@example.org", "no DKIM key for example.org"),
        ("a@example.com, b@example.org", "2 domains"),
        ("undisclosed-recipients:;", "0 domains"),
        ("not an address", "cannot be read"),
    ],
)
def test_the_policy_signs_by_the_author_domain(
    ed_key: DkimKey, author: str, unsigned: str | None
) -> None:
    policy = DkimPolicy([ed_signer(ed_key)])
    session = policy.start(f"From: {author}\r\nSubject: x\r\n".encode())
    if unsigned is None:
        assert session.unsigned is None
        assert tags(session.finish(NOW))["d"] == "example.com"
    else:
        assert session.unsigned is not None
        assert unsigned in session.unsigned
        assert session.finish(NOW) == b""


def test_several_signers_of_a_domain_sign_side_by_side(ed_key: DkimKey, rsa_key: DkimKey) -> None:
    policy = DkimPolicy(
        [
            DkimSigner(rsa_key, domain="example.com", selector="rsa"),
            DkimSigner(ed_key, domain="Example.COM", selector="ed"),
            DkimSigner(ed_key, domain="example.org", selector="ed"),
        ]
    )
    fields = policy.sign(MESSAGE, now=NOW)
    first, second = fields.split(b"\r\nDKIM-Signature:")
    assert tags(first)["a"] == "rsa-sha256"
    assert tags(b"DKIM-Signature:" + second)["a"] == "ed25519-sha256"
    assert fields.endswith(b"\r\n")
    assert not fields.endswith(b"\r\n\r\n")


def test_unicode_domains_match_their_a_labels(ed_key: DkimKey) -> None:
    policy = DkimPolicy([DkimSigner(ed_key, domain="Bücher.example", selector="ed")])
    assert policy.signers[0].domain == "xn--bcher-kva.example"
    assert policy.signers_for("xn--BCHER-kva.example") == policy.signers
    session = policy.start("From: leser@bücher.example\r\n".encode())
    assert tags(session.finish(NOW))["d"] == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"headers": ("to", "subject")}, "must sign the From field"),
        ({"oversign": ("from", "received")}, "must also be signed: received"),
        ({"selector": "bad selector"}, "not a DKIM selector"),
        ({"selector": "-x"}, "not a DKIM selector"),
        ({"domain": "exa mple.com"}, "DKIM domain"),
        ({"domain": "[192.0.2.1]"}, "is an address, not a domain"),
        ({"headers": ("from", "bad:name")}, "not a header field name"),
        ({"expire_after": timedelta(0)}, "expire_after must be positive"),
    ],
)
def test_wrong_settings_are_configuration_errors(
    ed_key: DkimKey, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"domain": "example.com", "selector": "ed", **options}
    with pytest.raises(ConfigurationError, match=message):
        DkimSigner(ed_key, **arguments)  # type: ignore[arg-type]


def test_two_signers_with_one_selector_are_refused(ed_key: DkimKey) -> None:
    with pytest.raises(ConfigurationError, match="two DKIM signers"):
        DkimPolicy([ed_signer(ed_key), ed_signer(ed_key)])


def test_defaults() -> None:
    assert SIGNED_FIELDS[0] == "from"
    assert set(OVERSIGNED_FIELDS) <= set(SIGNED_FIELDS)
    assert {"list-unsubscribe", "list-unsubscribe-post", "feedback-id"} <= set(SIGNED_FIELDS)


# -- keys -----------------------------------------------------------------------------------------


def test_keys_from_pem_in_every_form(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    private = rsa_key.private_key
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    for key in (
        DkimKey.from_pem(rsa_key.private_pem()),
        DkimKey.from_pem(pkcs1),
        DkimKey.from_pem(encrypted, password=b"secret"),
    ):
        assert key.algorithm is DkimAlgorithm.RSA_SHA256
        assert key.public_key() == rsa_key.public_key()
        assert key.bits == 2048
    raw = base64.b64encode(SEED) + b"\n"  # dkimpy's dknewkey writes Ed25519 keys so
    for key in (DkimKey.from_pem(ed_key.private_pem()), DkimKey.from_pem(raw)):
        assert key.algorithm is DkimAlgorithm.ED25519_SHA256
        assert key.public_key() == ed_key.public_key()


@pytest.mark.parametrize(
    ("data", "password", "message"),
    [
        (b"", None, "neither PEM nor"),
        (b"not a key", None, "neither PEM nor"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None, "cannot be read"),
    ],
)
def test_unreadable_keys(data: bytes, password: bytes | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DkimKey.from_pem(data, password=password)


def test_encrypted_key_without_its_password(rsa_key: DkimKey) -> None:
    encrypted = rsa_key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ConfigurationError, match="cannot be read"):
        DkimKey.from_pem(encrypted)


def test_not_an_rsa_or_ed25519_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match="RSA or Ed25519"):
        DkimKey(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


def test_repr_shows_no_key(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    assert repr(rsa_key) == "DkimKey(rsa-sha256, 2048 bits)"
    assert repr(ed_key) == "DkimKey(ed25519-sha256, 256 bits)"


def test_txt_records(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    assert ed_key.txt_record() == "v=DKIM1; k=ed25519; p=" + base64.b64encode(
        ed_key.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    ).decode("ascii")
    line = zone_line(domain="example.com", selector="s1", record=rsa_key.txt_record())
    name, _, strings = line.partition(" IN TXT ")
    assert name == "s1._domainkey.example.com."
    parts = re.findall(r'"([^"]*)"', strings)
    assert len(parts) == 2
    assert all(len(part) <= 255 for part in parts)
    assert "".join(parts) == rsa_key.txt_record()
    assert len(parts[0]) == 255


def test_without_cryptography_a_dependency_error_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(DependencyError, match=re.escape("pip install 'spoolmail[dkim]'")):
        DkimKey.from_pem(b"anything")
