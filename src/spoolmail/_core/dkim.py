"""DKIM signing: one pass over a message as it enters the Queue, a ``DKIM-Signature`` field out.

This module signs mail with DKIM (RFC 6376) in ``rsa-sha256`` (RFC 8301: SHA-1 is never used,
RSA keys have at least 1024 bits) and ``ed25519-sha256`` (RFC 8463). It reads the header block
and body chunks it is handed and the time it is given, and returns bytes; it never touches
files, the network or a clock, and never changes the message. Signing happens once, where a
message enters the Queue, so that a retry never re-signs and ``SIZE=`` stays right
(docs/dkim.md). The API, in the order the Queue's door uses it::

    signer = DkimSigner(key, domain="example.com", selector="2026a")
    session = signer.start(head)      # the header block as stored: split_head(message)[0]
    for chunk in body_chunks:         # the body after the empty line, in chunks of any size
        session.feed(chunk)
    fields = session.finish(now)      # b"DKIM-Signature: v=1; ...\\r\\n", folded at 78 columns

``fields`` covers the message exactly as stored, so the stored ``.eml`` stays immutable: the
door keeps ``fields`` beside it (in the envelope) and whoever writes the message out (the SMTP
transport, Drop) puts them in front of its first line. A :class:`DkimPolicy` picks the signers
by the domain of the ``From:`` field (the RFC 5322 author that DMARC aligns with, RFC 7489
section 3.1; a subdomain is signed only when it is configured itself) and never raises for a
message it cannot sign: its session's ``unsigned`` says why and ``finish`` returns ``b""``. A
domain may have several signers (RFC 8463 section 4 suggests one RSA and one Ed25519
signature); ``finish`` then returns one field for each. The body is hashed as it streams, one
hash per body canonicalization, so memory does not grow with the message.

What is signed and how, with the RFC sections that decide it:

- Canonicalization (section 3.4) ``relaxed/relaxed`` by default, ``simple`` on request. Line
  ends are read as the SMTP transport sends them: a bare CR or LF ends a line (RFC 5321
  section 2.3.8; ``_transport/data.py``). The body length tag ``l=`` is never used (section
  8.2: it lets anyone append to a signed body).
- The fields in :data:`SIGNED_FIELDS` that the message has, each instance (section 5.4.2:
  instances are taken from the bottom up), and those in :data:`OVERSIGNED_FIELDS` once more
  than present (section 8.15), so that nobody can add one later without breaking the
  signature. ``From`` must be signed (section 5.4), and a message without exactly one ``From``
  field is not signed at all.
- Tags ``v a c d s t [x] h bh b`` (section 3.5): ``t=`` is the time handed to ``finish``,
  ``x=`` that time plus ``expire_after`` when one is set.
- The signature (section 3.7, RFC 8463 section 3): SHA-256 over the canonicalized signed fields
  and this ``DKIM-Signature`` field with an empty ``b=``, then RSASSA-PKCS1-v1_5 over that hash,
  or Ed25519 over the 32 hash octets.

Keys are :class:`DkimKey` values made from PEM bytes (``DkimKey.from_pem``: reading the file is
the caller's job), or any object with the :class:`SigningKey` shape (an HSM, a KMS).
``cryptography`` is imported only when a key is made or used, so ``import spoolmail`` works
without it; without it a :class:`~spoolmail.exceptions.DependencyError` names the pip command.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import attrs

from spoolmail._core.address import AddressRole, parse_address_list, parse_domain
from spoolmail._core.headers import Field, fields
from spoolmail._core.pickup import pickup_head_end
from spoolmail.exceptions import ConfigurationError, DependencyError, MessageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "OVERSIGNED_FIELDS",
    "SIGNED_FIELDS",
    "BodyCanonicalizer",
    "Canonicalization",
    "DkimAlgorithm",
    "DkimKey",
    "DkimPolicy",
    "DkimSession",
    "DkimSigner",
    "SigningKey",
    "canonicalize_field",
    "zone_line",
]

SIGNED_FIELDS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "sender",
    "feedback-id",
)
"""The header fields signed by default, where the message has them (RFC 6376 section 5.4.1)."""

OVERSIGNED_FIELDS: tuple[str, ...] = (
    "from",
    "to",
    "subject",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
"""Fields listed in ``h=`` once more than present, even when absent (RFC 6376 section 8.15): an
added ``From``, ``Subject`` or RFC 8058 one-click unsubscribe field breaks the signature."""

# RFC 8301 section 3.2: signers MUST use RSA keys of at least 1024 bits (2048 recommended), and
# verifiers need not accept more than 4096.
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096

_WIDTH = 78  # RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters without the CRLF
_LINE_END = re.compile(rb"\r\n|\r|\n")  # as _transport/data.py sends them: all become CRLF
_WSP = re.compile(rb"[ \t]+")
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
# RFC 5322 section 3.6.8: printable ASCII but ":"; and not ";", which would end the h= tag
# (RFC 6376 section 3.2: a tag value holds no ";"), so no name can add a tag of its own.
_FIELD_NAME = re.compile(r"[!-9<-~]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # RFC 1035 section 2.3.4: 63 octets
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")  # RFC 6376 section 3.1: sub-domain labels
_INSTALL = "pip install 'spoolmail[dkim]'"


class DkimAlgorithm(enum.Enum):
    """The ``a=`` tag: the signing algorithm and hash (RFC 6376 section 3.3, RFC 8463)."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"

    @property
    def key_type(self) -> str:
        """The ``k=`` tag of the DNS key record: ``rsa`` or ``ed25519``."""
        return self.value.partition("-")[0]


class Canonicalization(enum.Enum):
    """How header fields or the body are normalized before hashing (RFC 6376 section 3.4)."""

    SIMPLE = "simple"
    RELAXED = "relaxed"


class SigningKey(Protocol):
    """What a signer needs of a key: its algorithm, and a signature over a SHA-256 digest.

    :class:`DkimKey` is one; a key held in an HSM or a cloud KMS can be another. For
    ``rsa-sha256``, ``sign_digest`` returns the RSASSA-PKCS1-v1_5 signature of the digest (the
    DigestInfo for SHA-256 around it); for ``ed25519-sha256``, the Ed25519 signature of the 32
    digest octets themselves (RFC 8463 section 3).
    """

    @property
    def algorithm(self) -> DkimAlgorithm:
        """What the key signs with: ``rsa-sha256`` or ``ed25519-sha256``."""
        ...

    def sign_digest(self, digest: bytes) -> bytes: ...


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401, PLC0415 (optional dependency, imported when used)
    except ImportError as exc:
        raise DependencyError(f"DKIM signing needs cryptography ({exc}): {_INSTALL}") from exc


@attrs.frozen(repr=False)
class DkimKey:
    """A private key to sign with: RSA (1024 to 4096 bits) or Ed25519.

    Made from a ``cryptography`` private key object or, usually, with :meth:`from_pem` from a
    key file's bytes. Its ``repr`` shows the algorithm and size, never the key.
    """

    private_key: RSAPrivateKey | Ed25519PrivateKey = attrs.field()

    @private_key.validator
    def _check(self, _attribute: object, value: object) -> None:
        _require_cryptography()
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

        if isinstance(value, rsa.RSAPrivateKey):
            bits = value.key_size
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise ConfigurationError(
                    f"the RSA key has {bits} bits; DKIM needs {MIN_RSA_BITS} to {MAX_RSA_BITS} "
                    "(RFC 8301 section 3.2; 2048 is the usual choice)"
                )
        elif not isinstance(value, ed25519.Ed25519PrivateKey):
            raise ConfigurationError(
                f"a DKIM key is an RSA or Ed25519 private key, not {type(value).__name__}"
            )

    @classmethod
    def from_pem(cls, data: bytes, *, password: bytes | None = None) -> DkimKey:
        """The key in ``data``: PEM (PKCS#8 ``PRIVATE KEY``, PKCS#1 ``RSA PRIVATE KEY``, either
        encrypted with ``password``), or for Ed25519 also the base64 32-octet raw private key
        that dkimpy's ``dknewkey`` writes. Anything else is a ConfigurationError.
        """
        _require_cryptography()
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

        text = data.strip()
        if not text.startswith(b"-----BEGIN"):
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigurationError(
                    "not a DKIM private key: neither PEM nor a base64 raw Ed25519 key"
                )
            return cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigurationError(f"the DKIM private key cannot be read: {exc}") from None
        return cls(key)  # type: ignore[arg-type]  # the validator checks the key type

    @property
    def algorithm(self) -> DkimAlgorithm:
        """``rsa-sha256`` or ``ed25519-sha256``, from the key's type."""
        from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return DkimAlgorithm.RSA_SHA256
        return DkimAlgorithm.ED25519_SHA256

    @property
    def bits(self) -> int:
        """The RSA modulus size, or 256 for Ed25519."""
        from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.key_size
        return 256

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest as :class:`SigningKey` says."""
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils  # noqa: PLC0415

        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return key.sign(digest)

    def public_key(self) -> str:
        """The ``p=`` value of the DNS key record: base64 of the DER SubjectPublicKeyInfo for
        RSA (RFC 6376 section 3.6.1), of the 32 raw public key octets for Ed25519 (RFC 8463
        section 4)."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        public = self.private_key.public_key()
        if self.algorithm is DkimAlgorithm.RSA_SHA256:
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(der).decode("ascii")

    def txt_record(self) -> str:
        """The TXT record to publish at ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 section 3.6.1)."""
        return f"v=DKIM1; k={self.algorithm.key_type}; p={self.public_key()}"

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, what :meth:`from_pem` reads back."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"DkimKey({self.algorithm.value}, {self.bits} bits)"


def zone_line(*, domain: str, selector: str, record: str) -> str:
    """``record`` as one zone-file line: ``SELECTOR._domainkey.DOMAIN. IN TXT "..." "..."``.

    A DNS character-string holds at most 255 octets (RFC 1035 section 3.3), so a longer record
    (an RSA 2048 key is about 410) is split into several strings, which verifiers join (RFC
    6376 section 3.6.2.2).
    """
    data = record.encode("ascii")
    strings = [data[start : start + 255].decode("ascii") for start in range(0, len(data), 255)]
    quoted = " ".join(f'"{part}"' for part in strings)
    return f"{selector}._domainkey.{_a_label(domain)}. IN TXT {quoted}"


# -- canonicalization (RFC 6376 section 3.4) -------------------------------------------------------


def canonicalize_field(raw: bytes, how: Canonicalization) -> bytes:
    """One header field (name, colon, value, continuation lines) canonicalized, ending CRLF.

    ``simple`` keeps it as sent (section 3.4.1); ``relaxed`` (section 3.4.2) lower-cases the
    name, unfolds, turns each run of spaces and tabs into one space and removes them around the
    colon and at the end.
    """
    raw = _LINE_END.sub(b"\r\n", raw)
    if how is Canonicalization.SIMPLE:
        return raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    name, _, value = raw.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


class BodyCanonicalizer:
    """A body canonicalized as it streams (RFC 6376 sections 3.4.3 and 3.4.4), in constant memory.

    :meth:`feed` takes chunks of any size and returns the canonical bytes known so far;
    :meth:`finish` returns the rest. What cannot be decided yet is held back as counts, never as
    bytes: line ends (empty lines at the end of the body are dropped), a CR that may start a
    CRLF, and for ``relaxed`` a run of white space that may end its line (then it is dropped)
    or not (then it is one space). The canonical form of an empty body is CRLF for ``simple``
    (section 3.4.3) and nothing for ``relaxed`` (section 3.4.4, as dkimpy and OpenDKIM compute
    it). A last line without CRLF is a line like the others: the SMTP transport ends every
    message with one.
    """

    def __init__(self, how: Canonicalization) -> None:
        self._relaxed = how is Canonicalization.RELAXED
        self._held_cr = False  # the last chunk ended in CR: an LF may follow
        self._line_ends = 0  # CRLFs held back: written only if more content follows
        self._space = False  # relaxed: white space held back at the end of the text so far
        self._written = False  # any content written yet

    def feed(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._held_cr else chunk
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        if not data:
            return b""
        pairs = data.count(b"\r\n")
        if data.count(b"\r") != pairs or data.count(b"\n") != pairs:  # a bare CR or LF
            data = _LINE_END.sub(b"\r\n", data)
        if self._relaxed:
            # Section 3.4.4 a and b: after the runs become one space, one may precede a CRLF.
            # Halving runs with replace is all C; a run of n spaces takes log2(n) passes.
            data = data.translate(_TAB_TO_SPACE)
            while b"  " in data:
                data = data.replace(b"  ", b" ")
            data = data.replace(b" \r\n", b"\r\n")
        return self._take(data)

    def finish(self) -> bytes:
        out = self._take(b"\r\n") if self._held_cr else b""
        self._held_cr = False
        if self._relaxed and not self._written:
            return out
        return out + b"\r\n"

    def _take(self, data: bytes) -> bytes:
        """Canonical output for ``data`` (CRLF line ends, white space already reduced)."""
        trailing_space = self._relaxed and data.endswith(b" ")
        if trailing_space:
            data = data[:-1]
        content = data.rstrip(b"\r\n")
        line_ends = (len(data) - len(content)) // 2  # only CRLF pairs remain after _LINE_END
        out = b""
        if content:
            if self._space and not content.startswith((b" ", b"\r\n")):
                content = b" " + content
            out = b"\r\n" * self._line_ends + content
            self._line_ends = 0
            self._written = True
            self._space = False
        if line_ends:
            self._line_ends += line_ends
            self._space = False  # it was at the end of a line: dropped
        if trailing_space:
            self._space = True
        return out


# -- the signature field -------------------------------------------------------------------------


class _Folder:
    """Builds a header field in lines of at most 78 characters, breaking only where FWS may go."""

    def __init__(self, start: str) -> None:
        self.lines = [start]

    def add(self, token: str, *, space: bool) -> None:
        separator = " " if space else ""
        if len(self.lines[-1]) + len(separator) + len(token) <= _WIDTH:
            self.lines[-1] += separator + token
        else:
            self.lines.append(" " + token)  # the CRLF before it makes this space FWS

    def add_breakable(self, text: str) -> None:
        """``text`` (base64), broken anywhere: RFC 6376 section 2.4 allows FWS inside."""
        while text:
            room = _WIDTH - len(self.lines[-1])
            if room <= 0:
                self.lines.append(" ")
                room = _WIDTH - 1
            self.lines[-1] += text[:room]
            text = text[room:]

    def text(self) -> str:
        return "\r\n".join(self.lines)


def _a_label(domain: str) -> str:
    """A domain as DNS looks it up: lower case, Unicode labels in their ``xn--`` form."""
    labels = domain.lower().rstrip(".").split(".")
    return ".".join(
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in labels
    )


def _signing_domain(value: str) -> str:
    try:
        domain = parse_domain(value)
    except MessageError as exc:
        raise ConfigurationError(f"DKIM domain: {exc}") from None
    if domain.startswith("["):  # d= is a domain name (RFC 6376 section 3.5), never an address
        raise ConfigurationError(f"DKIM domain: {value!r} is an address, not a domain")
    return _a_label(domain)


def _field_names(value: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip().lower() for name in value))
    for name in names:
        if not _FIELD_NAME.fullmatch(name):
            raise ConfigurationError(f"{name!r} is not a header field name")
    return names


def _positive(_instance: object, _attribute: object, value: timedelta | None) -> None:
    if value is not None and value <= timedelta(0):
        raise ConfigurationError(f"expire_after must be positive, not {value}")


def _selector(value: str) -> str:
    if not _SELECTOR.fullmatch(value):
        raise ConfigurationError(
            f"{value!r} is not a DKIM selector (dot-separated letters, digits and hyphens)"
        )
    return value


@attrs.frozen
class _Plan:
    """One signature to make: the signer, ``h=`` and the canonical signed fields, from ``start``."""

    signer: DkimSigner
    names: tuple[str, ...]
    signed: bytes


@attrs.frozen
class DkimSigner:
    """Signs for one domain with one key and selector; :meth:`start` begins a message.

    ``headers`` are the fields signed where present, ``oversign`` those listed once more than
    present (each must be in ``headers``; ``from`` must be). ``expire_after`` adds ``x=``.
    The key and the public record at ``SELECTOR._domainkey.DOMAIN`` must match.
    """

    key: SigningKey
    domain: str = attrs.field(converter=_signing_domain)
    selector: str = attrs.field(converter=_selector)
    headers: tuple[str, ...] = attrs.field(default=SIGNED_FIELDS, converter=_field_names)
    oversign: tuple[str, ...] = attrs.field(default=OVERSIGNED_FIELDS, converter=_field_names)
    header_canonicalization: Canonicalization = Canonicalization.RELAXED
    body_canonicalization: Canonicalization = Canonicalization.RELAXED
    expire_after: timedelta | None = attrs.field(default=None, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if "from" not in self.headers:
            raise ConfigurationError("DKIM must sign the From field (RFC 6376 section 5.4)")
        extra = [name for name in self.oversign if name not in self.headers]
        if extra:
            raise ConfigurationError(f"oversigned fields must also be signed: {', '.join(extra)}")

    def start(self, head: bytes) -> DkimSession:
        """Begin signing the message whose header block (as stored) is ``head``.

        A message without exactly one ``From`` field cannot be signed (RFC 6376 section 5.4,
        RFC 5322 section 3.6), nor one whose header section starts with a continuation line or
        holds a NUL (no signature over it would verify): that is a
        :class:`~spoolmail.exceptions.MessageError`, and the caller sends it unsigned.
        (:meth:`DkimPolicy.start` returns that as a value instead.)
        """
        head_fields = list(fields(head))
        reason = _head_problem(head) or _from_problem(head_fields)
        if reason is not None:
            raise MessageError(f"cannot DKIM-sign: {reason}")
        return DkimSession([self._plan(head_fields)])

    def sign(self, message: bytes, *, now: datetime) -> bytes:
        """The ``DKIM-Signature`` field for a whole message in memory (split at the empty line)."""
        head, body = _split(message)
        session = self.start(head)
        session.feed(body)
        return session.finish(now)

    def _plan(self, head_fields: Sequence[Field]) -> _Plan:
        by_name: dict[str, list[Field]] = {}
        for field in head_fields:
            by_name.setdefault(field.key, []).append(field)
        names: list[str] = []
        for name in self.headers:
            extra = 1 if name in self.oversign else 0
            names.extend([name] * (len(by_name.get(name, ())) + extra))
        # Section 5.4.2: the instances of a name are signed from the last one upwards; a name
        # listed more often than present signs nothing more (and forbids another one).
        signed = []
        for name in names:
            instances = by_name.get(name)
            if instances:
                signed.append(canonicalize_field(instances.pop().raw, self.header_canonicalization))
        return _Plan(self, tuple(names), b"".join(signed))

    def _field(self, plan: _Plan, body_hash: bytes, now: datetime) -> bytes:
        if now.utcoffset() is None:
            raise ValueError(f"now must be an aware datetime, not {now!r}")
        stamp = int(now.timestamp())
        algorithm = self.key.algorithm
        folder = _Folder("DKIM-Signature:")
        tags = [
            "v=1",
            f"a={algorithm.value}",
            f"c={self.header_canonicalization.value}/{self.body_canonicalization.value}",
            f"d={self.domain}",
            f"s={self.selector}",
            f"t={stamp}",
        ]
        if self.expire_after is not None:
            tags.append(f"x={stamp + int(self.expire_after.total_seconds())}")
        for tag in tags:
            folder.add(tag + ";", space=True)
        # h= may break after each colon (the hdr-name list allows FWS there, section 3.5).
        for index, name in enumerate(plan.names):
            last = index == len(plan.names) - 1
            token = name + (";" if last else ":")
            folder.add(token if index else "h=" + token, space=index == 0)
        folder.add(f"bh={base64.b64encode(body_hash).decode('ascii')};", space=True)
        folder.add("b=", space=True)
        # Section 3.7: the hash covers this field with an empty b=, canonicalized, with no CRLF.
        unsigned = folder.text().encode("ascii")
        own = canonicalize_field(unsigned, self.header_canonicalization)[:-2]
        digest = hashlib.sha256(plan.signed + own).digest()
        signature = self.key.sign_digest(digest)
        folder.add_breakable(base64.b64encode(signature).decode("ascii"))
        return folder.text().encode("ascii") + b"\r\n"


def _split(message: bytes) -> tuple[bytes, bytes]:
    """A whole message's header block and body, split where the Queue's door splits it: at the
    first empty line, a lone CR or LF ending a line too (RFC 5321 section 2.3.8)."""
    end = pickup_head_end(message, complete=True)
    return (message, b"") if end is None else (message[:end], message[end:])


def _head_problem(head: bytes) -> str | None:
    """Why a header block cannot carry a signature that verifies, or None."""
    if head.startswith((b" ", b"\t")):
        # RFC 5322 section 2.2.3: the first line would continue the DKIM-Signature field put in
        # front of it, and change the b= it ends with.
        return "its header section starts with a continuation line"
    if b"\0" in head:
        # RFC 5322 section 2.2 forbids NUL; OpenDKIM reads a field only as far as one.
        return "its header section holds a NUL octet"
    return None


def _from_problem(head_fields: Sequence[Field]) -> str | None:
    count = sum(1 for field in head_fields if field.key == "from")
    if count == 1:
        return None
    if count == 0:
        return "the message has no From field"
    return f"the message has {count} From fields"


class _BodyHash:
    """SHA-256 of a body in one canonicalization, fed in chunks."""

    def __init__(self, how: Canonicalization) -> None:
        self._canonicalizer = BodyCanonicalizer(how)
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._hash.update(self._canonicalizer.feed(chunk))

    def digest(self) -> bytes:
        self._hash.update(self._canonicalizer.finish())
        return self._hash.digest()


class DkimSession:
    """One message being signed: :meth:`feed` the body chunks, then :meth:`finish` once.

    ``unsigned`` is ``None`` when signatures will be made, else why none will (no signer for
    the author's domain, no or several ``From`` fields); ``feed`` then hashes nothing and
    ``finish`` returns ``b""``.
    """

    def __init__(self, plans: Sequence[_Plan], *, unsigned: str | None = None) -> None:
        self.unsigned = unsigned if plans else unsigned or "nothing to sign with"
        self._plans = tuple(plans)
        # One body hash per body canonicalization, whatever the number of signers (all SHA-256).
        self._bodies = {
            how: _BodyHash(how) for how in {plan.signer.body_canonicalization for plan in plans}
        }
        self._finished = False

    def feed(self, chunk: bytes) -> None:
        """Hash the next part of the body (the bytes after the empty line ending the head)."""
        if self._finished:
            raise RuntimeError("this DKIM session is finished")
        for body in self._bodies.values():
            body.update(chunk)

    def finish(self, now: datetime) -> bytes:
        """The ``DKIM-Signature`` fields, each folded and ending in CRLF, to put in front of the
        message; ``b""`` when ``unsigned``. ``now`` (aware) is the signing time ``t=``."""
        if self._finished:
            raise RuntimeError("this DKIM session is finished")
        self._finished = True
        body_hashes = {how: body.digest() for how, body in self._bodies.items()}
        return b"".join(
            plan.signer._field(plan, body_hashes[plan.signer.body_canonicalization], now)
            for plan in self._plans
        )


def _signers(value: Iterable[DkimSigner]) -> tuple[DkimSigner, ...]:
    signers = tuple(value)
    seen = set()
    for signer in signers:
        if (signer.domain, signer.selector) in seen:
            raise ConfigurationError(
                f"two DKIM signers for selector {signer.selector!r} of {signer.domain}"
            )
        seen.add((signer.domain, signer.selector))
    return signers


@attrs.frozen
class DkimPolicy:
    """Which signers sign a message: those whose domain is the ``From`` field's domain.

    DMARC (RFC 7489 section 3.1) aligns the DKIM domain with the author's, not the envelope
    sender's, so the choice is by ``From``. Domains match exactly: ``mail.example.com`` is
    signed only if it has signers of its own. Several signers of one domain sign side by side.
    """

    signers: tuple[DkimSigner, ...] = attrs.field(default=(), converter=_signers)

    def signers_for(self, domain: str) -> tuple[DkimSigner, ...]:
        """The signers of ``domain`` (any case, Unicode or ``xn--``), in the order given."""
        wanted = _a_label(domain)
        return tuple(signer for signer in self.signers if signer.domain == wanted)

    def start(self, head: bytes) -> DkimSession:
        """Begin a message; never raises for the message: see :attr:`DkimSession.unsigned`."""
        head_fields = list(fields(head))
        reason = _head_problem(head) or _from_problem(head_fields)
        if reason is not None:
            return DkimSession((), unsigned=reason)
        [author] = [field for field in head_fields if field.key == "from"]
        try:
            addresses = parse_address_list(
                author.value, default_domain=None, role=AddressRole.SENDER
            )
        except MessageError as exc:
            return DkimSession((), unsigned=f"its From field cannot be read: {exc}")
        domains = sorted({address.rpartition("@")[2] for address in addresses})
        if len(domains) != 1:
            return DkimSession((), unsigned=f"its From field names {len(domains)} domains, not one")
        signers = self.signers_for(domains[0])
        if not signers:
            return DkimSession((), unsigned=f"no DKIM key for {domains[0]}")
        return DkimSession([signer._plan(head_fields) for signer in signers])

    def sign(self, message: bytes, *, now: datetime) -> bytes:
        """The ``DKIM-Signature`` fields for a whole message in memory; ``b""`` if unsigned."""
        head, body = _split(message)
        session = self.start(head)
        session.feed(body)
        return session.finish(now)
