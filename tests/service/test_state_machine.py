"""A hypothesis rule-based state machine: whatever happens, every message is in exactly one place.

Rules submit good and bad messages (local, remote, refused, deferred; from local, remote and
null senders), change the remote server's answers, run ticks, move the clock, and hold,
release, flush and delete messages. After every step:

- no message is in two places at once (Pickup, Queue, BadMail);
- every message submitted is somewhere: waiting in one of those, or delivered (Drop or the
  transport), or returned inside a DSN, or deleted by an operator;
- between ticks the Queue holds whole messages only (a message file and one envelope each) and
  SortTemp holds no half-written file or claim (only process records and operators' triggers).
"""

from __future__ import annotations

import random
import re
from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spoolmail import MailService, Reply, Router, Spool
from spoolmail._core.envelope import decode_envelope
from spoolmail._core.ids import QueueIds
from spoolmail._store.store import Durability
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

SEQ = re.compile(rb"X-Seq: (\d+)")
RECIPIENTS = ["bob@example.com", "ok@remote.test", "slow@remote.test", "gone@remote.test"]
SENDERS = ["alice@example.com", "alice@remote.test", "<>"]
ANSWERS = {
    "ok": Reply(250, "2.0.0", "ok", host="relay.test"),
    "later": Reply(451, "4.3.0", "busy", host="relay.test"),
    "no": Reply(550, "5.1.1", "no such user", host="relay.test"),
    "down": Reply(451, "4.4.1", "connection refused", host="relay.test"),
}


def seqs(data: bytes) -> set[int]:
    return {int(m) for m in SEQ.findall(data)}


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        # Seeded ids: hypothesis replays a failing run step by step, so ids must repeat too.
        self.spool = Spool(
            "mem://", clock=self.clock, durability=Durability.NONE, ids=QueueIds(random.Random(0))
        )
        self.transport = CapturingTransport({"slow@remote.test": ANSWERS["later"]})
        self.service = MailService(
            self.spool,
            router=Router(local_domains=["example.com"], smart_host="relay.test"),
            transport=self.transport,
            host_resolver=StaticResolver(fallback="127.0.0.1"),
            clock=self.clock,
            fqdn="mail.example.com",
        )
        self.submitted: set[int] = set()
        self.deleted: set[int] = set()
        self.next_seq = 0

    def teardown(self) -> None:
        self.service.close()
        self.spool.close()

    # -- rules ---------------------------------------------------------------------------------

    @rule(
        recipients=st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=4, unique=True),
        sender=st.sampled_from(SENDERS),
    )
    def submit(self, recipients: list[str], sender: str) -> None:
        seq = self.next_seq
        self.next_seq += 1
        body = f"From: app@example.com\r\nTo: {', '.join(recipients)}\r\nX-Seq: {seq}\r\n\r\nhi\r\n"
        self.spool.submit(body.encode(), sender=sender, recipients=recipients)
        self.submitted.add(seq)

    @rule()
    def drop_a_bad_file(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        self.spool.fs.writebytes(f"Pickup/bad{seq}.txt", b"X-Seq: %d\r\nno addresses\r\n" % seq)
        self.submitted.add(seq)

    @rule(address=st.sampled_from(RECIPIENTS[1:]), answer=st.sampled_from(sorted(ANSWERS)))
    def remote_answers(self, address: str, answer: str) -> None:
        assert isinstance(self.transport.answers, dict)
        self.transport.answers[address] = ANSWERS[answer]

    @rule()
    def tick(self) -> None:
        report = self.service.run_once()
        assert report.errors == ()

    @rule(minutes=st.integers(min_value=1, max_value=24 * 60))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    @precondition(lambda self: bool(list(self.spool.queued())))
    @rule(data=st.data(), action=st.sampled_from(["hold", "release", "flush", "delete"]))
    def operate(self, data: st.DataObject, action: str) -> None:
        queued = sorted(q.id for q in self.spool.queued())
        queue_id = data.draw(st.sampled_from(queued))
        if action == "delete":
            self.deleted |= seqs(self.spool.message(queue_id))
        getattr(self.spool, action)([queue_id])

    # -- invariants ------------------------------------------------------------------------------

    def _originals(self, folder: str, suffix: str) -> list[int]:
        """X-Seq of the original messages (not DSNs) in a folder."""
        found: list[int] = []
        for name in self.spool._store.listdir(folder):
            if not name.endswith(suffix):
                continue
            data = self.spool._store.read(folder, name)
            if (
                data.startswith(b"From: postmaster@")
                or b"report-type=delivery-status" in data[:2000]
            ):
                continue
            found.extend(seqs(data.split(b"\r\n\r\n", 1)[0] + b"\r\n"))
        return found

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        waiting = (
            self._originals("Pickup", "")
            + self._originals("Queue", ".eml")
            + self._originals("BadMail", ".BAD")
        )
        assert len(waiting) == len(set(waiting)), f"a message is in two places: {sorted(waiting)}"
        seen = set(waiting) | self.deleted
        for name in self.spool._store.listdir("Drop"):
            seen |= seqs(self.spool._store.read("Drop", name))
        for captured in self.transport.messages:
            seen |= seqs(captured.data)
        for name in self.spool._store.listdir("Queue"):
            if name.endswith(".eml"):
                seen |= seqs(self.spool._store.read("Queue", name))  # inside queued DSNs
        for name in self.spool._store.listdir("BadMail"):
            if name.endswith(".BAD"):
                seen |= seqs(self.spool._store.read("BadMail", name))
        assert self.submitted <= seen, f"lost: {sorted(self.submitted - seen)}"

    @invariant()
    def the_queue_holds_whole_messages_only(self) -> None:
        files = self.spool._store.queue_files()
        for queue_id, entry in files.items():
            assert entry.message, f"{queue_id} has no message file"
            assert entry.envelope, f"{queue_id} has no envelope: {entry}"
            assert not entry.claims, f"{queue_id} is still claimed: {entry}"
            decode_envelope(self.spool._store.read("Queue", f"{queue_id}.env"))
        leftovers = [
            n
            for n in self.spool._store.listdir("SortTemp")
            if not n.endswith((".owner", ".trigger")) and n not in self.spool._store.spares
        ]
        assert leftovers == []


SpoolMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=timedelta(seconds=5)
)
TestSpoolMachine = SpoolMachine.TestCase
