"""``spoolmail dkim keygen``: a new DKIM key, and the DNS record that publishes it.

Makes an RSA (2048 bits unless told otherwise; RFC 8301 allows 1024 to 4096) or Ed25519 (RFC
8463) private key from the operating system's random source, writes it as PKCS#8 PEM to
``SELECTOR.private`` in the folder given (created mode 0600, never over an existing file: a key
in use must not vanish before its replacement is published), and prints the TXT record to
publish at ``SELECTOR._domainkey.DOMAIN`` as a zone-file line, split into strings of at most
255 octets. It reads and writes nothing else; the signing itself is ``_core/dkim.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, TextIO

from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_OK
from spoolmail._core.dkim import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    DkimAlgorithm,
    DkimKey,
    DkimSigner,
    zone_line,
)
from spoolmail.exceptions import ConfigurationError, DependencyError

__all__ = ["ALGORITHMS", "add_commands", "generate_key", "keygen"]

# The --algorithm choices: the DNS record's k= names.
ALGORITHMS = {"rsa": DkimAlgorithm.RSA_SHA256, "ed25519": DkimAlgorithm.ED25519_SHA256}


def generate_key(algorithm: DkimAlgorithm, *, bits: int = 2048) -> DkimKey:
    """A new private key (``bits`` is for RSA only) from the operating system's random source."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyError(
            f"DKIM keys need cryptography ({exc}): pip install 'spoolmail[dkim]'"
        ) from exc
    if algorithm is DkimAlgorithm.ED25519_SHA256:
        return DkimKey(ed25519.Ed25519PrivateKey.generate())
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise ConfigurationError(
            f"--bits {bits}: DKIM RSA keys have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits "
            "(RFC 8301 section 3.2); 2048 is the usual choice"
        )
    return DkimKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def keygen(
    domain: str,
    selector: str,
    *,
    algorithm: str | DkimAlgorithm = "rsa",
    bits: int = 2048,
    out_dir: str | os.PathLike[str] = ".",
) -> tuple[Path, str]:
    """Write ``out_dir/SELECTOR.private`` (mode 0600) and return its path and the zone line.

    ``algorithm`` is ``"rsa"``, ``"ed25519"`` or a :class:`DkimAlgorithm`. An existing file is
    never replaced: that is a ConfigurationError, and nothing is written.
    """
    if isinstance(algorithm, str):
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(f"--algorithm {algorithm}: choose rsa or ed25519")
        algorithm = ALGORITHMS[algorithm]
    key = generate_key(algorithm, bits=bits)
    signer = DkimSigner(key, domain=domain, selector=selector)  # checks both names
    folder = Path(out_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{signer.selector}.private"
    try:
        # O_EXCL: never over a key in use; 0600 before a byte is written (umask only narrows it).
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(
            f"{path} exists; choose a new selector for a new key (or move the old file away)"
        ) from None
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.private_pem())
        file.flush()
        os.fsync(file.fileno())
    record = zone_line(domain=signer.domain, selector=signer.selector, record=key.txt_record())
    return path, record


def add_commands(commands: Any) -> None:
    """Add ``dkim keygen`` to the command tree."""
    dkim = commands.add_parser("dkim")
    actions = dkim.add_subparsers(dest="action", required=True, metavar="action")
    generate = actions.add_parser(
        "keygen",
        help="write SELECTOR.private and print the TXT record to publish",
        description="Write a new private key to DIR/SELECTOR.private (mode 0600) and print the "
        "TXT record to publish at SELECTOR._domainkey.DOMAIN.",
    )
    generate.add_argument("domain", metavar="DOMAIN", help="the signing domain (d=)")
    generate.add_argument("selector", metavar="SELECTOR", help="the key's name in DNS (s=)")
    generate.add_argument(
        "--algorithm", choices=sorted(ALGORITHMS), default="rsa", help="default rsa"
    )
    generate.add_argument(
        "--bits", type=int, default=2048, help="RSA key size (1024 to 4096, default 2048)"
    )
    generate.add_argument(
        "--out", type=Path, default=Path(), metavar="DIR", help="where to write (default .)"
    )
    generate.set_defaults(handler=_keygen)


def _keygen(_settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    path, record = keygen(
        args.domain, args.selector, algorithm=args.algorithm, bits=args.bits, out_dir=args.out
    )
    algorithm = ALGORITHMS[args.algorithm]
    size = f", {args.bits} bits" if algorithm is DkimAlgorithm.RSA_SHA256 else ""
    # A zone-file comment, so that the output can be appended to a zone as it is.
    print(f"; {path}: {algorithm.value}{size}; publish this record in DNS:", file=out)
    print(record, file=out)
    return EX_OK
