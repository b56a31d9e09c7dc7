"""DATA encoding and what MAIL must declare (``spoolmail._transport.data``), on bytes alone.

The encoder must turn any stored bytes, cut into any blocks, into DATA a server reads back as the
same message with CRLF line ends (RFC 5321 §2.3.8, §4.5.2); :func:`examine` must find UTF-8 in
the header section (SMTPUTF8, RFC 6531 §3.4) and octets over 127 (BODY=8BITMIME) whatever the
reads, reading no further than it has to.
"""

from __future__ import annotations

import io
import itertools
import random
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.ids import QueueIds
from spoolmail._store import pyfs
from spoolmail._store.store import Durability, MailStore
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import (
    CHUNK,
    INLINE,
    DataEncoder,
    crlf_only,
    data_blocks,
    examine,
    own_data,
)
from spoolmail.testing import FakeClock
from tests.transport.wire import unstuff

ASCII_MESSAGE = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
# RFC 6532: UTF-8 in header fields, addresses in ASCII.
UTF8_MESSAGE = (
    "From: Zoë <alice@example.net>\r\n"
    "To: bob@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "\r\n"
    "Viele Grüße.\r\n"
).encode()


def outgoing(
    data: bytes = ASCII_MESSAGE,
    *,
    recipients: Sequence[str] = ("bob@example.com",),
    eight_bit: bool | None = None,
) -> Outgoing:
    return Outgoing(
        id="test",
        sender="alice@example.net",
        recipients=recipients,
        size=len(data),
        open=lambda: io.BytesIO(data),
        eight_bit=eight_bit,
    )


# The encoder.


def normalised(data: bytes) -> bytes:
    """``data`` with every line end CRLF and a CRLF at the end, as the encoder promises."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


def encoded_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    """What one encoder sends for ``data`` handed over in pieces of the ``cuts``' sizes."""
    encoder = DataEncoder()
    pieces = []
    rest = data
    for cut in cuts:
        pieces.append(encoder.encode(rest[:cut]))
        rest = rest[cut:]
    return b"".join([*pieces, encoder.encode(rest), encoder.finish()])


@given(
    data=st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"..", b"\xff"])).map(
        b"".join
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=64)),
)
def test_encoder_round_trips_whatever_the_chunking(data: bytes, cuts: list[int]) -> None:
    wire = encoded_in_pieces(data, cuts)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None, "a bare CR or LF went on the wire"
    assert unstuff(wire) == normalised(data)


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b"a", b"."])).map(b"".join))
def test_crlf_only_is_the_absence_of_a_bare_cr_or_lf(data: bytes) -> None:
    # The encoder's fast path (no substitution) is taken exactly for such blocks.
    assert crlf_only(data) == (re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None)


@given(
    lines=st.lists(st.sampled_from([b"", b".", b"..", b".a", b"a.", b"text"]), min_size=1),
    cuts=st.lists(st.integers(min_value=0, max_value=40)),
)
def test_crlf_blocks_are_only_dot_stuffed(lines: list[bytes], cuts: list[int]) -> None:
    wire = encoded_in_pieces(b"".join(line + b"\r\n" for line in lines), cuts)
    assert wire == b"".join(b"." * line.startswith(b".") + line + b"\r\n" for line in lines) + (
        b".\r\n"
    )


@given(
    lines=st.lists(st.sampled_from([b"", b".", b"..", b".a", b"a.", b"\xff"]), min_size=1),
    cuts=st.lists(st.integers(min_value=0, max_value=40)),
)
def test_trusting_crlf_gives_the_checked_bytes(lines: list[bytes], cuts: list[int]) -> None:
    # Outgoing.dot_lines known: the blocks are not checked for bare CR or LF, same DATA.
    data = b"".join(line + b"\r\n" for line in lines)
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    blocks = [data[a:b] for a, b in itertools.pairwise(edges)]
    for crlf in (False, True):
        encoder = DataEncoder(crlf=crlf)
        wire = b"".join([*map(encoder.encode, blocks), encoder.finish()])
        assert unstuff(wire) == data


def test_stored_keeps_what_is_known_of_the_lines_only_if_the_prepend_does() -> None:
    def stored(prepend: bytes) -> bool | None:
        made = Outgoing.stored(
            id="x",
            sender="",
            recipients=(),
            size=0,
            open=io.BytesIO,
            prepend=prepend,
            dot_lines=False,
        )
        return made.dot_lines

    assert stored(b"") is False
    assert stored(b"DKIM-Signature: v=1;\r\n\tb=x\r\n") is False
    assert stored(b"DKIM-Signature: v=1;\r\n.b=x\r\n") is True
    assert stored(b".DKIM: x\r\n") is True
    assert stored(b"DKIM-Signature: v=1;\nb=x\r\n") is None
    assert stored(b"DKIM-Signature: v=1;") is None


def test_a_file_is_its_own_data_only_from_a_descriptor_and_ending_in_crlf(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ID.eml"
    big = b"x" * INLINE + b"\r\n"
    cases = [
        (b"a\r\nb\r\n", True),
        (b"a\r\nb", False),
        (b"\r", False),
        (b"", False),
        (big, True),
        (big[:-1], False),
    ]
    for data, whole in cases:
        path.write_bytes(data)
        with path.open("rb") as source:
            found = own_data(source)
            # Up to INLINE octets the file itself comes back, read whole; above, only its size.
            small = data if len(data) <= INLINE else None
            assert found == ((source.fileno(), len(data), small) if whole else None)
    assert own_data(io.BytesIO(b"a\r\n")) is None


def test_a_mailroot_file_is_its_own_data_at_the_size_its_open_saw(tmp_path: Path) -> None:
    # MailStore.open's file knows the size fstat gave at the open: own_data asks no second
    # fstat, and a file cut after the open reads shorter than that size (the sender refuses
    # to send it, as for any file cut meanwhile).
    store = MailStore(
        pyfs.OSFS(str(tmp_path)),
        durability=Durability.FSYNC,
        clock=FakeClock(),
        ids=QueueIds(random.Random(1)),
    )
    store.write("Queue", "q1.eml", b"a\r\nb\r\n")
    with store.open("Queue", "q1.eml") as source:
        assert own_data(source) == (source.fileno(), 6, b"a\r\nb\r\n")
        (tmp_path / "Queue" / "q1.eml").write_bytes(b"a\r\n")
        assert own_data(source) == (source.fileno(), 6, b"a\r\n")


def test_encoder_does_not_double_a_final_crlf() -> None:
    encoder = DataEncoder()
    assert encoder.encode(b"a\r\n") + encoder.finish() == b"a\r\n.\r\n"
    encoder = DataEncoder()
    assert encoder.encode(b"a") + encoder.finish() == b"a\r\n.\r\n"
    assert DataEncoder().finish() == b".\r\n"


def test_encoder_stuffs_a_dot_after_a_line_end_split_across_blocks() -> None:
    encoder = DataEncoder()
    wire = (
        encoder.encode(b"x\r") + encoder.encode(b"\n.y\r") + encoder.encode(b".") + encoder.finish()
    )
    assert wire == b"x\r\n..y\r\n..\r\n.\r\n"


@pytest.mark.parametrize("size", [0, 10, CHUNK - 1, CHUNK, 3 * CHUNK + 5])
def test_data_blocks_end_with_the_final_dot_in_the_last_write(size: int) -> None:
    data = (b"x" * 98 + b"\r\n") * (size // 100) + b"." * (size % 100)
    blocks = list(data_blocks(io.BytesIO(data)))
    assert blocks[-1].endswith(b".\r\n")
    assert all(blocks), "no empty write"
    assert all(len(block) <= 2 * CHUNK for block in blocks)
    assert unstuff(b"".join(blocks)) == normalised(data)


# What MAIL must declare, read from the stored message.


class Trickle(io.BytesIO):
    """A stored file that hands out at most ``step`` octets per read, whatever is asked."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step
        self.handed_out = 0

    def read(self, size: int | None = -1, /) -> bytes:
        block = super().read(self.step)
        self.handed_out += len(block)
        return block


def expected_utf8_headers(data: bytes) -> bool:
    """The reference: the header section of the DATA form of ``data``, in one piece."""
    encoder = DataEncoder()
    wire = b"\r\n" + encoder.encode(data) + encoder.finish()
    end = wire.find(b"\r\n\r\n")
    head = wire[2:end] if end >= 2 else b""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not head.isascii()


@given(
    head=st.lists(st.sampled_from(["Subject: ", "é", "x", "\r\n", "\n", "\r", " ", "日本"])),
    junk=st.sampled_from([b"", b"\xff", b"\xc3"]),
    body=st.binary(max_size=20),
    step=st.integers(min_value=1, max_value=7),
)
def test_utf8_headers_are_found_whatever_the_reads(
    head: list[str], junk: bytes, body: bytes, step: int
) -> None:
    data = "".join(head).encode() + junk + b"\r\n\r\n" + body
    message = attrs.evolve(outgoing(data), open=lambda: Trickle(data, step))
    content = examine(message, eight_bit_matters=True)
    assert content.utf8_headers == expected_utf8_headers(data)
    assert content.eight_bit == (not data.isascii())


@pytest.mark.parametrize(
    ("data", "utf8_headers", "eight_bit"),
    [
        (ASCII_MESSAGE, False, False),
        (UTF8_MESSAGE, True, True),
        # UTF-8 in the body only: 8BITMIME's business, not SMTPUTF8's.
        (b"Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", False, True),
        # An old client's Latin-1 Subject: 8-bit, but no RFC 6532 header.
        (b"Subject: Gr\xfc\xdfe\r\n\r\nhi\r\n", False, True),
        # No header section at all; then one that never ends.
        (b"\r\nGr\xc3\xbc\xc3\x9fe\r\n", False, True),
        ("Subject: Grüße".encode(), True, True),
        # A UTF-8 sequence cut by the end of the header section is not UTF-8.
        (b"Subject: \xc3\r\n\r\n\xbc\r\n", False, True),
    ],
)
def test_what_mail_must_declare(data: bytes, utf8_headers: bool, eight_bit: bool) -> None:
    assert examine(outgoing(data), eight_bit_matters=True).utf8_headers == utf8_headers
    assert examine(outgoing(data), eight_bit_matters=True).eight_bit == eight_bit


def test_an_all_ascii_message_is_not_read() -> None:
    def refuse() -> io.BytesIO:
        raise AssertionError("read although intake found it all ASCII")

    message = attrs.evolve(outgoing(), open=refuse, eight_bit=False)
    content = examine(message, eight_bit_matters=True)
    assert (content.eight_bit, content.utf8_headers) == (False, False)


def test_only_the_header_section_is_read_when_the_body_does_not_matter() -> None:
    source = Trickle(b"Subject: hi\r\n\r\n" + b"body line\r\n" * 1000, step=64)
    message = attrs.evolve(outgoing(), open=lambda: source, eight_bit=True)
    assert not examine(message, eight_bit_matters=True).utf8_headers
    assert source.handed_out <= 64
