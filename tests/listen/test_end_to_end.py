"""The listener beside a real MailService: local mail lands in Drop, relayed mail reaches an
aiosmtpd sink on loopback."""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path

from spoolmail import MailService, Router, Spool
from tests.listen.conftest import host_port, running
from tests.smtpservers import SmtpServer

MESSAGE = b"From: a@client.test\r\nSubject: through\r\n\r\nhello\r\n"


def test_local_mail_to_drop_and_remote_mail_to_the_smart_host(tmp_path: Path) -> None:
    with SmtpServer() as sink, Spool(tmp_path / "MailRoot") as spool:
        router = Router(local_domains=["example.com"], smart_host=f"[{sink.host}]:{sink.port}")
        service = MailService(spool, router=router)
        done = threading.Event()
        finished: set[str] = set()

        def seen(report: object) -> None:
            finished.update(getattr(report, "finished", ()))
            if len(finished) >= 2:
                done.set()

        loop = threading.Thread(
            target=service.run_forever, kwargs={"poll_interval": 3600, "on_report": seen}
        )
        loop.start()
        try:
            with running(spool, router=router, relay_networks=["127.0.0.1"]) as listener:
                with smtplib.SMTP(*host_port(listener), local_hostname="client.test") as client:
                    client.sendmail("a@client.test", ["bob@example.com"], MESSAGE)
                    client.sendmail("a@client.test", ["carol@remote.test"], MESSAGE)
                assert done.wait(30), "the service did not deliver both messages"
        finally:
            service.stop()
            loop.join(30)
            service.close()
        drop = list(spool.drop())
        assert len(drop) == 1
        assert drop[0].recipients == ("bob@example.com",)
        (relayed,) = sink.messages
        assert relayed.rcpt_tos == ("carol@remote.test",)
        assert b"Received: from client.test ([127.0.0.1])" in relayed.data
        assert list(spool.queued()) == []
