"""``Report``: what one tick of ``MailService`` did, and the ``Tally`` it is made from.

The loop (``service``) and each message's attempt (``attempts``) append queue ids and
(queue id, address) pairs to a :class:`Tally`; each delivery thread keeps its own, merged into
the tick's once the attempt is done, and the tick freezes it into the :class:`Report`
``run_once`` returns. Plain records: nothing here reads or writes the spool, or looks at a clock.
"""

from __future__ import annotations

import attrs

__all__ = ["Report", "Tally"]


@attrs.frozen
class Report:
    """What one ``run_once`` did. Recipients are listed as (queue id, address) pairs."""

    picked_up: tuple[str, ...] = ()
    badmail: tuple[str, ...] = ()
    delivered: tuple[tuple[str, str], ...] = ()
    deferred: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    dsns: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(attrs.astuple(self, recurse=False))


@attrs.define
class Tally:
    """A tick's :class:`Report` while it is made: the loop and each attempt append to it."""

    picked_up: list[str] = attrs.Factory(list)
    badmail: list[str] = attrs.Factory(list)
    delivered: list[tuple[str, str]] = attrs.Factory(list)
    deferred: list[tuple[str, str]] = attrs.Factory(list)
    failed: list[tuple[str, str]] = attrs.Factory(list)
    dsns: list[str] = attrs.Factory(list)
    finished: list[str] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)

    def freeze(self) -> Report:
        # Once a tick: the fields by name, not attrs.asdict (a dict and its walk each time).
        return Report(**{name: tuple(getattr(self, name)) for name in _TALLIES})

    def merge(self, other: Tally) -> None:
        # Once per attempt: plain attribute access, not attrs.asdict (a dict per call).
        for name in _TALLIES:
            values = getattr(other, name)
            if values:
                getattr(self, name).extend(values)


_TALLIES = tuple(field.name for field in attrs.fields(Tally))
