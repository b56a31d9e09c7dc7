"""The stored message as it goes over the wire: DATA encoding and what MAIL must declare.

:class:`DataEncoder` turns stored bytes into DATA bytes (CRLF line ends, dot-stuffing, the final
``.``) block by block in constant memory; :func:`examine` reads a stored message once, as far as
it must, to learn whether MAIL needs ``BODY=8BITMIME`` or ``SMTPUTF8``; :func:`own_data` tells
when a stored file can go as it is (sendfile). They read the stored message only through
``Outgoing.open`` and blocks handed in, write nothing, and never touch a socket or the
transcript.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

import attrs

from spoolmail._core.headers import crlf_lines
from spoolmail._transport.base import Outgoing

__all__ = [
    "CHUNK",
    "FINAL_DOT",
    "INLINE",
    "Content",
    "DataEncoder",
    "crlf_only",
    "data_blocks",
    "examine",
    "own_data",
]

# Message data is read and sent in blocks of this size, so memory stays flat whatever the size.
CHUNK = 64 * 1024
# RFC 5321 §2.3.8: CR and LF occur only together; a bare CR or LF in a stored file ends a line too.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf_only(block: bytes) -> bool:
    """Whether every CR and LF in ``block`` is part of a CRLF: nothing to normalise.

    Checked in C (``headers.crlf_lines``), where the regular expression's substitution costs
    several times that; a stored message is CRLF throughout (intake makes it so), so the
    substitution runs only for a block that needs it.
    """
    return crlf_lines(block) is not None


class DataEncoder:
    """Turns stored message bytes into DATA bytes, block by block, in constant memory.

    Every line end becomes CRLF (RFC 5321 §2.3.8: CR and LF only ever travel together, so a bare LF
    or CR in the file ends a line), and a line that starts with "." gets one more (§4.5.2). Both
    work across block boundaries: the encoder remembers whether its output ended a line, and holds
    back a trailing CR until it sees whether an LF follows. :meth:`finish` returns the rest and the
    terminating ``CRLF.CRLF``, without doubling a CRLF the message already ends with.
    ``crlf=True`` trusts the writer that made every line end CRLF (``Outgoing.dot_lines`` not
    ``None``): the blocks are only dot-stuffed, not checked.
    """

    def __init__(self, *, crlf: bool = False) -> None:
        self._line_start = True
        self._held_cr = False
        self._crlf = crlf

    def encode(self, block: bytes) -> bytes:
        if self._held_cr:
            block = b"\r" + block
            self._held_cr = False
        if block.endswith(b"\r"):
            block = block[:-1]
            self._held_cr = True
        if not block:
            return b""
        if not self._crlf and not crlf_only(block):
            block = _LINE_END.sub(b"\r\n", block)
        # split and join: one search, where replace searches twice (to size its result).
        out = b"\r\n..".join(block.split(b"\r\n."))
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        self._line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        if self._held_cr:
            self._held_cr = False
            self._line_start = True
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


def data_blocks(source: BinaryIO, *, crlf: bool = False) -> Iterator[bytes]:
    """``source`` as DATA: dot-stuffed blocks of at most about :data:`CHUNK` octets, the last
    one ending with the final ``.``.

    Each block is handed out once the next has been read, so the last one leaves in the same
    write as the final ".": two small writes in a row would wait for the server's delayed ACK
    (Nagle's algorithm, RFC 896), some 40 ms a message. ``crlf`` as for :class:`DataEncoder`.
    """
    encoder = DataEncoder(crlf=crlf)
    held = b""
    while block := source.read(CHUNK):
        if held:
            yield held
        held = encoder.encode(block)
    yield held + encoder.finish()


# What follows a message that ends with CRLF (RFC 5321 §4.1.1.4).
FINAL_DOT = b".\r\n"


# A stored file up to this size goes with its final "." in one write (read whole, one ``send``)
# instead of by sendfile(2) between corking and uncorking the socket: three system calls fewer
# a message, and a copy of a few KiB costs less than any of them (bench/README.md, "Eleventh
# round").
INLINE = 16 * 1024


def own_data(source: BinaryIO) -> tuple[int, int, bytes | None] | None:
    """(descriptor, size, the whole file if it is small) of a stored file that can go as DATA
    as it is, before :data:`FINAL_DOT`. What was read can be shorter than ``size`` only if the
    file was cut meanwhile: the caller sends nothing of it then.

    Only for a file whose writer made every line CRLF with none starting with "." (``Outgoing.
    dot_lines`` is ``False``): then it needs no stuffing, and the socket can be fed from the
    page cache (sendfile), or, up to :data:`INLINE` octets, from one read of the whole file.
    ``None`` sends it block by block instead: a file object with no descriptor (another
    filesystem, a DKIM prefix in front), or one that does not end in CRLF.
    """
    try:
        fd = source.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    # A MailRoot file knows the size fstat gave when it was opened: no second fstat.
    size = getattr(source, "size", None)
    if type(size) is not int:
        size = os.fstat(fd).st_size
    if size < 2:
        return None
    if size <= INLINE:
        whole = os.pread(fd, size, 0)
        if len(whole) == size and not whole.endswith(b"\r\n"):
            return None
        return fd, size, whole  # shorter than fstat said (cut meanwhile): the sender says so
    if os.pread(fd, 2, size - 2) != b"\r\n":
        return None
    return fd, size, None


@attrs.frozen
class Content:
    """What MAIL must declare about a message: octets over 127 (BODY=8BITMIME, RFC 6152) and
    UTF-8 in its header fields (SMTPUTF8, RFC 6531 §3.4)."""

    eight_bit: bool
    utf8_headers: bool


def examine(message: Outgoing, *, eight_bit_matters: bool) -> Content:
    """One streaming pass over the stored file, as far as it has to go, in constant memory.

    The header section is read up to the empty line that ends it (RFC 5322 §2.1): UTF-8 beyond
    ASCII there (RFC 6532) needs SMTPUTF8. It is decided here, at send time, from the stored
    bytes that will go; octets over 127 that are not UTF-8 (a Latin-1 Subject from an old client)
    are no RFC 6532 header and ask for nothing more than BODY=8BITMIME, as before. The rest is
    read only when the server offers 8BITMIME and intake did not note whether the message is
    8-bit (the one case where that answer changes what we send; a server without 8BITMIME gets
    the bytes as they are, as most MTAs do, and RFC 6152 §3's conversion to 7 bit is not
    implemented). A message intake found all ASCII is not read at all.
    """
    known = message.eight_bit
    if known is False:
        return Content(eight_bit=False, utf8_headers=False)
    look_for_eight_bit = known is None and eight_bit_matters
    # The encoder makes every line end CRLF, as DATA will, so one pattern finds the empty line.
    encoder = DataEncoder()
    decoder = codecs.getincrementaldecoder("utf-8")()
    window = b"\r\n"  # the section starts at a line start: an empty first line ends it at once
    in_headers = utf8 = True
    header_non_ascii = seen_non_ascii = False
    with message.open() as source:
        while block := source.read(CHUNK):
            seen_non_ascii = seen_non_ascii or not block.isascii()
            if in_headers:
                out = encoder.encode(block)
                data = window + out
                end = data.find(b"\r\n\r\n")
                head = out if end < 0 else out[: max(0, end - len(window))]
                header_non_ascii = header_non_ascii or not head.isascii()
                try:
                    decoder.decode(head, final=end >= 0)
                except UnicodeDecodeError:
                    utf8 = False
                in_headers = end < 0
                window = data[-3:]
            # Invalid UTF-8 means an octet over 127 was seen: nothing is left to learn then.
            if (not in_headers or not utf8) and (not look_for_eight_bit or seen_non_ascii):
                break
    if in_headers and utf8:
        try:
            decoder.decode(b"", final=True)  # a message that is all header section
        except UnicodeDecodeError:
            utf8 = False
    return Content(
        eight_bit=seen_non_ascii if known is None else known,
        utf8_headers=utf8 and header_non_ascii,
    )
