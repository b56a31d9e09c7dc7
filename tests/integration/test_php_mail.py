"""PHP's ``mail()`` through ``spoolmail-sendmail``, set as its ``sendmail_path``.

The way a PHP site on Linux sends mail: php-cli (Debian's ``php-cli``, installed by CI) runs
``mail()`` with ``-d sendmail_path="<console script> -t -i"``; PHP pipes the message in, the
command writes it into Pickup, a real ``MailService`` run delivers it to Drop, and the Drop
file is compared byte for byte. The console script is found next to the interpreter running
the tests (``/tmp/venv/bin`` or nox's ``.nox/tests/bin``), where installing spoolmail puts it.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail import MailService, Router, Spool
from tests.peers import require_program

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PHP's mail() uses sendmail"),
]

SCRIPT = Path(sys.executable).parent / "spoolmail-sendmail"

# mail($to, $subject, $message, $additional_headers, $additional_params): two recipients, an
# extra header, a body with a lone "." (text, with -i), and the envelope sender as the fifth
# argument, which PHP appends to sendmail_path.
SEND = """
$sent = mail(
    "ops@example.com, dev@example.org",
    "Disk report",
    "line one\\nline two\\n.\\nlast line\\n",
    ["X-Report" => "disk", "From" => "Web App <app@example.com>"],
    "-fbounces@example.com"
);
echo $sent ? "sent" : "not sent";
"""


def php(code: str, *, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``php -r code`` without any php.ini, spoolmail-sendmail as its sendmail."""
    program = require_program("php", package="php-cli")
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install spoolmail (pip install -e .) to make it")
    return subprocess.run(
        [program, "-n", "-d", f"sendmail_path={SCRIPT} -t -i", "-r", code],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", **environ},
        timeout=60,
    )


def configure(tmp_path: Path, root: Path) -> dict[str, str]:
    settings = tmp_path / "spoolmail.toml"
    settings.write_text(
        f'[spoolmail]\nroot = "{root}"\nlocal_domains = ["example.com", "example.org"]\n'
    )
    # PHP runs as the site's user; here its login name is given, as a web server's is.
    return {"SPOOLMAIL_CONFIG": str(settings), "LOGNAME": "www-data"}


def test_php_mail_arrives_in_drop_as_written(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    Spool(str(root)).close()
    done = php(SEND, environ=configure(tmp_path, root))
    assert (done.returncode, done.stdout, done.stderr) == (0, "sent", "")
    [written] = (root / "Pickup").iterdir()
    assert written.read_bytes().startswith(
        b"x-sender: <bounces@example.com>\r\n"
        b"x-receiver: <ops@example.com>\r\n"
        b"x-receiver: <dev@example.org>\r\n"
    )

    with Spool(str(root)) as spool:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com", "example.org"]),
            fqdn="mail.example.com",
            pickup_settle=timedelta(0),
        )
        try:
            report = service.run_once()
        finally:
            service.close()
    assert sorted(address for _, address in report.delivered) == [
        "dev@example.org",
        "ops@example.com",
    ]
    [drop] = (root / "Drop").iterdir()
    head, _, body = drop.read_bytes().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[:3] == [
        b"x-sender: bounces@example.com",
        b"x-receiver: ops@example.com",
        b"x-receiver: dev@example.org",
    ]
    for line in (
        b"To: ops@example.com, dev@example.org",
        b"Subject: Disk report",
        b"X-Report: disk",
        b"From: Web App <app@example.com>",
        b"Return-Path: <bounces@example.com>",
    ):
        assert line in lines
    # PHP ends the body with a CRLF of its own; a lone "." is the message's text under -i.
    assert body == b"line one\r\nline two\r\n.\r\nlast line\r\n\r\n"


def test_php_mail_returns_false_when_nothing_was_sent(tmp_path: Path) -> None:
    missing = tmp_path / "NoMailRoot"
    done = php(SEND, environ=configure(tmp_path, missing))
    assert done.stdout == "not sent"
    assert done.stderr.startswith(f"spoolmail sendmail: no Pickup folder at {missing / 'Pickup'}: ")
    assert not missing.exists()
