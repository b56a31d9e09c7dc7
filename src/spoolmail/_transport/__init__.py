"""Transports: how messages leave the spool (SMTP), behind the small seam in ``base``."""
