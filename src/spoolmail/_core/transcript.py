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
    """The lines of one delivery attempt. ``clock`` stamps each line (an aware UTC datetime)."""

    clock: Callable[[], datetime]
    lines: list[str] = attrs.Factory(list)

    def _stamp(self) -> str:
        return self.clock().astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]

    def begin(self, title: str) -> None:
        """Start a section: an attempt, or one host of an attempt."""
        when = self.clock().astimezone(UTC).isoformat(timespec="milliseconds")
        self.lines.append(f"--- {when} {title}")

    def sent(self, line: str) -> None:
        """A command spoolmail sent. Callers redact secrets (AUTH) before handing them in."""
        self.lines.append(f"{self._stamp()} > {line}")

    def received(self, line: str) -> None:
        """A reply line the peer sent."""
        self.lines.append(f"{self._stamp()} < {line}")

    def note(self, text: str) -> None:
        """What spoolmail did or decided (connected, timed out, wrote a Drop file)."""
        self.lines.append(f"{self._stamp()} * {text}")

    def extend(self, other: Transcript) -> None:
        self.lines.extend(other.lines)

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


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
