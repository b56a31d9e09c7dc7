"""Hand-off: the listening workers pass what their SMTP sessions queue to the workers that do not
listen, which deliver it.

With several worker processes (``spoolmail run --workers``) the first ones listen (one per two
CPUs by default, ``_cli.workers.listening``). A listening worker's threads (the sessions'
event loop, the group commit, the tick, and its delivery threads) share one GIL. When it
delivered what it accepted as well, the listening workers did all the work of SMTP in while
the others idled (two of four busy, about 70% of a core each). So a listening worker names
what its sessions queue in the shares of the workers that do not listen
(:meth:`Handoff.takes`, through ``Spool.new_id``) and tells the share's owner the id
(:meth:`Handoff.send`): one datagram into the owner's inbox, a ``socketpair`` made by the
supervisor before the first fork. The inbox is also the owner's
wake socket (``tick.Waker``): its loop wakes for a handed-off id as for its own arrivals.

Nothing depends on a datagram arriving. The message is on disk, in its owner's share, durable
before the ``250``; the owner rescans its share at its start and every ``rescan_interval``. An
inbox that does not take the datagram at once (its owner stuck, the buffer full) leaves the
message to the sender, which schedules it itself: a claim is a rename, so it is delivered once
whoever claims it. A worker started again gets the same inbox, with what waited in it.

What comes out of an inbox is checked as any outside input: only well-formed ids of the
receiver's own share are scheduled; anything else is dropped (the rescan would find a real
message anyway). Pickup intake never hands off: every worker takes its own share of Pickup and
delivers it, as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterable, Iterator

from spoolmail._core.ids import is_made_id
from spoolmail._core.shares import Share

__all__ = ["WAKE", "Handoff"]

log = logging.getLogger("spoolmail")

#: What a thread of the receiving process sends into its own inbox to end its loop's wait.
WAKE = b"!"
# How often, at most, a full inbox is told of in the log (per receiving worker).
_WARN_EVERY = 60.0


class Handoff:
    """The inboxes of the workers ``listening..count-1`` (those that take handed-off mail), for
    a group of ``count`` workers of which the first ``listening`` listen.

    Made by the supervisor before it forks, so every worker and every worker started again
    holds the same sockets. A worker uses its part: :meth:`takes` and :meth:`send` when it
    listens, :meth:`inbox` when it takes.
    """

    def __init__(self, count: int, listening: int) -> None:
        if not 0 < listening < count:
            raise ValueError(f"{listening} listening workers of {count} leave none to hand to")
        self.count = count
        self.listening = listening
        self._inboxes: dict[int, tuple[socket.socket, socket.socket]] = {}
        # One inbox of spares for all the listening workers: whichever writes next takes the
        # next spare. One each, passed in turn, left the busier listener (three sessions of
        # five against two) creating files while the other's inbox overflowed and the takers
        # deleted what it could not hold.
        self._spares: tuple[socket.socket, socket.socket] | None = None
        self._warned: dict[int, float] = {}  # when a full inbox was last told of, by worker
        try:
            for index in range(listening, count):
                self._inboxes[index] = _pair()
            self._spares = _pair()
        except OSError:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Handoff(count={self.count}, listening={self.listening})"

    def gives(self, share: Share) -> bool:
        """Whether worker ``share`` hands off (it listens) rather than takes."""
        return share.index < self.listening

    def takes(self, queue_id: str) -> bool:
        """Whether ``queue_id`` is in the share of a worker that takes handed-off mail."""
        return Share.of(queue_id, self.count) >= self.listening

    def send(self, queue_id: str) -> bool:
        """Tell ``queue_id``'s owner that it is queued; ``False`` if its inbox did not take it
        at once (the caller then schedules the message itself)."""
        index = Share.of(queue_id, self.count)
        pair = self._inboxes.get(index)
        if pair is None:
            return False
        try:
            pair[1].send(queue_id.encode("ascii"))
        except OSError as exc:  # full (its owner stuck), or closed
            self._missed(index, exc)
            return False
        return True

    def _missed(self, index: int, exc: OSError) -> None:
        """Say in the log that worker ``index``'s inbox took nothing, at most once a minute:
        its mail is delivered all the same, by the listening workers, but a worker that reads
        no inbox is stuck."""
        now = time.monotonic()
        if now - self._warned.get(index, -math.inf) < _WARN_EVERY:
            return
        self._warned[index] = now
        log.warning(
            "hand-off: worker %d's inbox takes nothing (%s); the listening workers deliver "
            "its share of their mail themselves meanwhile (said at most once a minute)",
            index,
            exc.strerror or exc,
        )

    def inbox(self, share: Share) -> tuple[socket.socket, socket.socket] | None:
        """Worker ``share``'s inbox, if it takes: the end to read and the end anyone sends
        into (``tick.Waker`` uses the pair as its wake socket)."""
        return self._inboxes.get(share.index)

    def pass_spare(self, name: str) -> bool:
        """Pass the spare file ``SortTemp/name`` of a taking worker to the listening ones: the
        listeners write the files the takers delete (``MailStore.exchange_spares``), and
        creating a file costs ext4 far more than writing over one. ``False`` if not taken (the
        inbox is full: the listeners have more spares waiting than they write files)."""
        if self._spares is None:
            return False
        try:
            self._spares[1].send(name.encode("ascii"))
        except (OSError, UnicodeEncodeError):
            return False
        return True

    def spare_inbox(self, share: Share) -> socket.socket | None:
        """Where listening worker ``share`` finds the spares passed (the end to read, which
        every listening worker reads: a datagram is one spare, taken by one of them)."""
        if not self.gives(share) or self._spares is None:
            return None
        return self._spares[0]

    def close(self) -> None:
        for pair in (*self._inboxes.values(), *((self._spares,) if self._spares else ())):
            for end in pair:
                end.close()
        self._inboxes, self._spares = {}, None


def _pair() -> tuple[socket.socket, socket.socket]:
    # Datagrams, so that several processes may send into one inbox at once; both ends
    # non-blocking: no worker ever waits for another's inbox.
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in pair:
        end.setblocking(False)
    return pair


def received(datagrams: Iterable[bytes], share: Share) -> Iterator[str]:
    """The ids in what an inbox held: a well-formed id of ``share`` per datagram. Wake-ups
    (:data:`WAKE`) and anything else are passed over."""
    for data in datagrams:
        if data == WAKE or len(data) > 64:
            continue
        with contextlib.suppress(UnicodeDecodeError):
            queue_id = data.decode("ascii")
            if is_made_id(queue_id) and share.owns_id(queue_id):
                yield queue_id
