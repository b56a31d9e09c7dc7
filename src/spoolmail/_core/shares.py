"""Shares: how several worker processes on one MailRoot divide the mail without contending.

Claims are renames, so any number of processes may work on one MailRoot and each message is
still delivered once (``_store.store``, rule 3). But processes that all list every Pickup file
and schedule every queued message race for each of them: most renames fail, every envelope is
read N times. A :class:`Share` gives each worker its part instead, decided from the name alone:
worker ``index`` of ``count`` takes the Pickup files and schedules the queued messages whose
key hashes to ``index``. The ids a worker makes fall in its own share (``MailStore.new_id``),
so what it takes in, it delivers; a DSN's id (``ID-dN``) hashes as its parent's. A message in
another share is still claimed by rename, so a worker that strays (a recovery, a trigger) is
harmless: it loses the rename or delivers once.

Pure: names in, numbers out (CRC-32, which is stable across processes and Python versions,
unlike ``hash``).
"""

from __future__ import annotations

import re
import zlib

import attrs

from spoolmail._core.ids import is_made_id

__all__ = ["WHOLE", "Share", "part"]

_DSN_SUFFIX = re.compile(r"-d[0-9]+$")


def _positive(_instance: object, _attribute: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"a share's count must be 1 or more, not {value!r}")


@attrs.frozen
class Share:
    """Worker ``index`` (from 0) of ``count`` worker processes on one MailRoot.

    ``Share(0, 1)`` is everything: a single service. Every worker of a group must
    be given the same ``count``; a worker started with another count still delivers each message
    once, but may leave a part of the mail to nobody until the group agrees again.
    """

    index: int = attrs.field()
    count: int = attrs.field(validator=_positive)

    @index.validator
    def _within(self, _attribute: object, value: int) -> None:
        if not 0 <= value < self.count:
            raise ValueError(f"share index {value!r} is not in 0..{self.count - 1}")

    @property
    def whole(self) -> bool:
        """Whether this share is everything (one worker)."""
        return self.count == 1

    @staticmethod
    def of(queue_id: str, count: int) -> int:
        """The index of the share of ``count`` that the queued message ``queue_id`` is in."""
        if count == 1:
            return 0
        return _slot(_DSN_SUFFIX.sub("", queue_id), count)

    def owns_id(self, queue_id: str) -> bool:
        """Whether the queued message ``queue_id`` is this worker's to schedule."""
        return Share.of(queue_id, self.count) == self.index

    def owns_name(self, name: str) -> bool:
        """Whether the Pickup file ``name`` is this worker's to take.

        A file named ``<queue id>.eml`` (``Spool.submit``'s names) keeps its id when taken in,
        so it belongs where its id does.
        """
        if self.count == 1:
            return True
        stem, dot, extension = name.rpartition(".")
        if dot and extension == "eml" and is_made_id(stem):
            return self.owns_id(stem)
        return _slot(name, self.count) == self.index

    def all(self) -> list[Share]:
        """Every share of this group, this one included, in index order."""
        return [Share(index, self.count) for index in range(self.count)]


def _slot(key: str, count: int) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


#: One worker: everything.
WHOLE = Share(0, 1)


def part(limit: int, share: Share, *, handing_off: int = 0) -> int:
    """Worker ``share.index``'s part of ``limit``, a limit for the whole service: divided among
    the workers, the first ones one more where it does not divide evenly, and at least 1 (a
    limit below the number of workers is then exceeded: each worker needs one to work at all).

    ``handing_off``: the first that many workers listen and hand what their sessions accept to
    the others (``_service.handoff``), which then deliver it besides their own share: each of
    those weighs twice a listening worker's (ten connections over two and two: 2, 2, 3, 3).
    """
    count = share.count
    if not 0 < handing_off < count:
        whole, rest = divmod(limit, count)
        return max(1, whole + (share.index < rest))
    weights = [1 if index < handing_off else 2 for index in range(count)]
    total = sum(weights)
    # Whole parts by weight; what is left goes one each to the largest remainders (the first
    # ones on a tie), so that the parts add up to the limit.
    floors = [limit * weight // total for weight in weights]
    left = limit - sum(floors)
    order = sorted(range(count), key=lambda index: (-(limit * weights[index] % total), index))
    return max(1, floors[share.index] + (share.index in order[:left]))
