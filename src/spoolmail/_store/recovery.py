"""Recovery: finish what dead processes left half done, so every commit is whole or undone.

The other half of the commit protocol in ``store`` (docs/design.md#crash-safety). A process can die
between any two renames; at start and at every rescan :func:`recover` looks at what such a death
leaves and completes it:

- a Pickup claim in SortTemp (``ID.OWNER.NAME.pickup``) of a dead owner: if its message is
  queued already, the claim was all that was left to remove; otherwise the file is taken in
  again under the same id (``take_in``, intake's job), so it is queued exactly once;
- a delivery claim (``Queue/ID.OWNER.env``) of a dead owner: handed back to the Queue as it was
  (DELIVERING --abandoned--> QUEUED); a stale copy beside an unclaimed envelope is removed; one
  without its message is a finish cut short, and is completed;
- half-written files and records of dead owners in SortTemp are deleted;
- a message older than a lease without an envelope (an admission cut short before the envelope)
  goes to BadMail (QUEUED --damaged--> BADMAIL) for an operator; a BadMail report whose message
  never arrived (a move cut short) is removed.

Another process may be between two steps of a commit right now: only claims of dead owners are
touched, and only files older than a lease count as left behind. An entry that cannot be
recovered (a directory planted where a file belongs, a failing disk) is named in the result's
``errors`` and left for the next pass; it stops no other. Returns a :class:`Recovery`, what it
did, for the service to report; builds no policy of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import attrs

from spoolmail._core.badmail import orphan_report
from spoolmail._core.states import Event, State
from spoolmail._store.folders import BADMAIL, QUEUE
from spoolmail._store.store import PickupClaim, QueueFiles
from spoolmail._store.transitions import Change, Transitions
from spoolmail.exceptions import StorageError

__all__ = ["Recovery", "recover"]

log = logging.getLogger("spoolmail")


@attrs.frozen
class Recovery:
    """What one :func:`recover` pass did, and the Queue as it stands after it."""

    files: Mapping[str, QueueFiles]
    """Every id with files in the Queue, after recovery (one listing serves a whole rescan)."""
    taken_in: tuple[str, ...] = ()
    """Pickup claims of dead owners handed to intake again."""
    returned: tuple[str, ...] = ()
    """Delivery claims of dead owners handed back to the Queue."""
    finished: tuple[str, ...] = ()
    """Finishes a crash cut short, completed."""
    badmail: tuple[str, ...] = ()
    """Messages found without an envelope, moved to BadMail."""
    swept: int = 0
    """Half-written files and dead owners' records deleted from SortTemp."""
    errors: tuple[str, ...] = ()
    """Entries that could not be recovered (a directory where a file belongs, a failing disk):
    each left as it is, for the next pass, while the rest were recovered."""


def recover(
    transitions: Transitions,
    *,
    take_in: Callable[[PickupClaim], object],
    owns: Callable[[str], bool] | None = None,
) -> Recovery:
    """Complete what dead owners left (see the module docstring); ``take_in`` re-runs intake on
    a Pickup claim this process now holds. ``owns`` (a worker's share) limits the Queue's part
    to the ids it says yes to: each worker of a group recovers and lists its own share, not
    everyone's (the Pickup claims, whoever's, are recovered by every worker that finds them)."""
    store = transitions.files
    store.announce()

    def abandoned(owner: str) -> bool:
        # This process's own claims count too: none is in progress between ticks, and a Spool
        # serves one MailService at a time.
        return owner == store.owner or not store.owner_alive(owner)

    taken_in: list[str] = []
    for claim in store.pickup_claims():
        if abandoned(claim.owner):
            mine = claim if claim.owner == store.owner else store.take_over(claim)
            if mine is not None and transitions.queued(mine.id):
                store.finish_claim(mine)  # committed before a crash cut the claim's removal
            elif mine is not None:
                take_in(mine)
                taken_in.append(mine.id)
    # One listing serves the whole rescan (100,000 names cost a second to sort out); what
    # recovery changes, it changes in the listing too.
    files = store.queue_files(owns)
    returned: list[str] = []
    finished: list[str] = []
    errors: list[str] = []
    for queue_id, entry in list(files.items()):
        for owner in entry.claims:
            if abandoned(owner):
                # One entry that cannot be recovered must not stop the pass: the rescan that
                # follows schedules every other message only if this returns.
                try:
                    entry = _recover_claim(transitions, entry, owner, returned, finished)  # noqa: PLW2901
                except StorageError as exc:
                    errors.append(_unrecovered(queue_id, exc))
        files[queue_id] = entry
    swept = store.sweep_temp()
    badmail = _sweep_orphans(transitions, files, errors)
    return Recovery(
        files=files,
        taken_in=tuple(taken_in),
        returned=tuple(returned),
        finished=tuple(finished),
        badmail=tuple(badmail),
        swept=swept,
        errors=tuple(errors),
    )


def _unrecovered(queue_id: str, exc: StorageError) -> str:
    log.error("%s: left as it is until the next recovery: %s", queue_id, exc)
    return f"{queue_id}: {exc}"


def _recover_claim(
    transitions: Transitions,
    entry: QueueFiles,
    owner: str,
    returned: list[str],
    finished: list[str],
) -> QueueFiles:
    """Return an abandoned delivery claim to the Queue; what the Queue then holds for it."""
    store, queue_id = transitions.files, entry.id
    claims = tuple(c for c in entry.claims if c != owner)
    if entry.envelope:
        log.warning("%s: removing a stale claim of dead owner %s", queue_id, owner)
        store.remove(QUEUE, store.claimed_name(queue_id, owner))
        return attrs.evolve(entry, claims=claims)
    if not entry.message:
        log.info("%s: completing a finish that owner %s began", queue_id, owner)
        transitions.apply(State.DELIVERING, Event.SETTLED, Change(id=queue_id, owner=owner))
        finished.append(queue_id)
        return attrs.evolve(entry, claims=claims, transcripts=())
    change = Change(id=queue_id, owner=owner)
    if transitions.apply(State.DELIVERING, Event.ABANDONED, change) is not None:
        log.info("%s: returned to the Queue from owner %s", queue_id, owner)
        returned.append(queue_id)
        return attrs.evolve(entry, claims=claims, envelope=True)
    return entry  # another process took it over first


def _sweep_orphans(
    transitions: Transitions, files: Mapping[str, QueueFiles], errors: list[str]
) -> list[str]:
    """Move a message left without envelope to BadMail; drop reports of undone BadMail moves.

    Another process may be between two steps of a commit right now, so only files older
    than a lease count as left behind: a commit takes milliseconds, not minutes. An entry
    that cannot be moved or removed is added to ``errors`` and left; the others go on.
    """
    store = transitions.files
    moved: list[str] = []
    claimed_ids = {c.id for c in store.pickup_claims()}
    for queue_id, entry in files.items():
        if entry.envelope or entry.claims or queue_id in claimed_ids:
            continue
        try:
            if entry.message:
                if not store.stale(QUEUE, f"{queue_id}.eml"):
                    continue
                change = Change(id=queue_id, report=orphan_report())
                transitions.apply(State.QUEUED, Event.DAMAGED, change)
                moved.append(queue_id)
            for kind in entry.transcripts:
                store.remove(QUEUE, f"{queue_id}.{kind}")
        except StorageError as exc:
            errors.append(_unrecovered(queue_id, exc))
    for name in store.listdir(BADMAIL):
        queue_id, _, kind = name.partition(".")
        queued = files.get(queue_id)
        if (
            kind == "BDR"
            and queued is not None
            and (queued.envelope or queued.claims)
            and not store.exists(BADMAIL, f"{queue_id}.BAD")
            and store.stale(BADMAIL, name)
        ):
            try:
                transitions.remove_badmail_reports(queue_id)
            except StorageError as exc:
                errors.append(_unrecovered(queue_id, exc))
    return moved
