"""Files of lines that spoolmail appends to and reads back (the mail log, the suppression list).

An append is one ``write`` of whole lines; a crash (or a full disk) can still cut the last one
short. :func:`end_cut_line` ends such a line before the next append, so that the damage costs
that line only; :func:`read_lines` reads lines in bounded memory, passing over any longer than
its caller's bound (a damaged or planted file of hundreds of megabytes without a line end).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

__all__ = ["end_cut_line", "read_lines"]


def read_lines(handle: IO[bytes], longest: int) -> Iterator[bytes]:
    """The lines of ``handle`` (line end kept), those longer than ``longest`` bytes left out:
    memory stays bounded by ``longest`` whatever the file holds."""
    while line := handle.readline(longest + 1):
        if len(line) <= longest or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long one, piece by piece
            line = handle.readline(longest)


def end_cut_line(fd: int) -> None:
    """End the last line of the file open as ``fd`` if a crash (or a full disk) cut it short:
    the next line appended then starts a line of its own, not glued to the cut one and skipped
    with it. Two processes may both end it: an empty line, which readers pass over."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
