"""What the SMTP client decides from values alone (``spoolmail._transport.policy``)."""

from __future__ import annotations

import itertools

import pytest

from spoolmail._core.reply import Reply
from spoolmail._transport.policy import pipeline_groups
from spoolmail._transport.policy import too_many as is_too_many


@pytest.mark.parametrize(
    ("reply", "too_many"),
    [
        (Reply(452, "4.5.3", "Too many recipients"), True),
        (Reply(452, None, "Too many recipients"), True),
        (Reply(552, "5.5.3", "Too many recipients"), True),  # RFC 821's code, §4.5.3.1.10
        (Reply(552, None, "Too many recipients in this message"), True),
        (Reply(452, "4.2.2", "Mailbox full"), False),
        (Reply(552, None, "Mailbox full"), False),
        (Reply(451, "4.5.3", "Too many recipients"), False),
        (Reply(550, "5.1.1", "No such user"), False),
    ],
)
def test_too_many_recipients_is_recognised(reply: Reply, too_many: bool) -> None:
    assert is_too_many(reply) is too_many


def test_pipeline_groups_fit_the_window() -> None:
    commands = [
        "MAIL FROM:<a@x.test>",
        *(f"RCPT TO:<{'r' * 90}{n}@x.test>" for n in range(80)),
        "DATA",
    ]
    groups = list(pipeline_groups(commands, utf8=False))
    assert [command for _, group in groups for command in group] == commands
    assert [start for start, _ in groups] == [0, *itertools.accumulate(len(g) for _, g in groups)][
        :-1
    ]
    assert len(groups) > 1
    assert all(sum(len(c) + 2 for c in group) <= 4096 for _, group in groups)
    # A command longer than the window still goes, alone.
    assert list(pipeline_groups(["x" * 5000, "DATA"], utf8=False)) == [
        (0, ["x" * 5000]),
        (1, ["DATA"]),
    ]
