"""The spool store: the MailRoot folders on a PyFilesystem2 filesystem, with atomic commits."""
