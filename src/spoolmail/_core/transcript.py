"""Transcripts: what happened on every delivery attempt, in words an operator can read.

IIS wrote ``Queue/ID.RTR`` (remote) and ``Queue/ID.LTR`` (local) with the recipient and the last
error (KB Q317099, Q263646). spoolmail writes that summary first and, below it, the dialogue of
every attempt: timestamped commands sent (``>``), replies received (``<``) and notes (``*``), so a
waiting message explains itself. A :class:`Transcript` collects one attempt's lines; the
``render_transcript`` / ``transcript_history`` pair reads and writes the file text. Pure: the clock
is handed in, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import attrs

from spoolmail._core.envelope import Recipient

__all__ = ["HISTORY_MARK", "Transcript", "render_transcript", "transcript_history"]

HISTORY_MARK = "Delivery attempts, oldest first:"


@attrs.define
class Transcript:
    """The lines of one delivery attempt. ``clock`` stamps each line (an aware UTC datetime).

    Lines are kept as (time, mark, text) and formatted only when read (``lines``, ``text``): a
    message delivered at the first attempt keeps no transcript, so its lines are never formatted.
    ``stamp``, when given, is read for each line's time instead of ``clock``: a count of
    nanoseconds since the epoch (``time.time_ns``, when ``clock`` is the real time), made a
    datetime only if the lines are read. The delivery hands it in: ten lines or so a message,
    and an aware datetime for each cost ten times as much.
    """

    clock: Callable[[], datetime]
    _entries: list[tuple[datetime | int, str, str]] = attrs.field(factory=list, init=False)
    # How the times are taken is not what a transcript is: two with the same lines are equal.
    stamp: Callable[[], int] | None = attrs.field(default=None, kw_only=True, repr=False, eq=False)
    _stamp: Callable[[], datetime | int] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        self._stamp = self.clock if self.stamp is None else self.stamp

    def begin(self, title: str) -> None:
        """Start a section: an attempt, or one host of an attempt."""
        self._entries.append((self._stamp(), "---", title))

    def sent(self, line: str) -> None:
        """A command spoolmail sent. Callers redact secrets (AUTH) before handing them in."""
        self._entries.append((self._stamp(), ">", line))

    def received(self, line: str) -> None:
        """A reply line the peer sent."""
        self._entries.append((self._stamp(), "<", line))

    def note(self, text: str) -> None:
        """What spoolmail did or decided (connected, timed out, wrote a Drop file)."""
        self._entries.append((self._stamp(), "*", text))

    def extend(self, other: Transcript) -> None:
        """Append ``other``'s lines to this transcript."""
        self._entries.extend(other._entries)

    @property
    def lines(self) -> list[str]:
        """The lines as written to the transcript file: a section's first line carries the date."""
        return [_format(when, mark, text) for when, mark, text in self._entries]

    @property
    def text(self) -> str:
        """The transcript as it is written into ``.RTR`` / ``.LTR`` files and BadMail reports."""
        return "".join(f"{line}\n" for line in self.lines)


def _moment(nanoseconds: int) -> datetime:
    """``time.time_ns()`` as ``datetime.now(UTC)`` gives it: to the microsecond, rounded down."""
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def _format(when: datetime | int, mark: str, text: str) -> str:
    utc = _moment(when) if isinstance(when, int) else when.astimezone(UTC)
    if mark == "---":
        return f"--- {utc.isoformat(timespec='milliseconds')} {text}"
    return f"{utc.strftime('%H:%M:%S.%f')[:-3]} {mark} {text}"


def _summary(recipients: Iterable[Recipient]) -> list[str]:
    lines: list[str] = []
    for recipient in recipients:
        lines.append(f"<{recipient.address}>")
        if recipient.reply is None:
            lines.append(f"{recipient.state.value}: not attempted yet")
        else:
            where = f" (from {recipient.reply.host})" if recipient.reply.host else ""
            lines.append(f"{recipient.state.value}: {recipient.reply}{where}")
    return lines


def render_transcript(recipients: Iterable[Recipient], history: str) -> str:
    """The transcript file: each recipient and its last reply (as IIS wrote), then the history."""
    summary = "\n".join(_summary(recipients))
    return f"{summary}\n\n{HISTORY_MARK}\n{history}"


def transcript_history(text: str) -> str:
    """The history part of a transcript file (everything below the mark), ``""`` if none."""
    _, mark, history = text.partition(f"\n{HISTORY_MARK}\n")
    return history if mark else ""
