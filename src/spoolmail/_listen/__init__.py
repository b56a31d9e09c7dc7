"""The inbound SMTP listener: aiosmtpd driven by spoolmail's relay rules, committing to the Queue.

``listener`` runs it (sockets, an event-loop thread, start and stop); ``session`` is the glue
between aiosmtpd and the pure decisions in ``_core.relay`` and ``_core.esmtp``; ``replies``
gives aiosmtpd's own replies their RFC 3463 codes; ``passwords`` checks AUTH against a file of
scrypt hashes. Needs the ``server`` extra (aiosmtpd). Sits above ``_store`` and ``_service``,
below ``_cli``.
"""
