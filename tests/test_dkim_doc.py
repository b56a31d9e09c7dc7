"""``docs/dkim.md``: its settings file loads, and signs as the page says.

The page's Python examples run with the other pages' (``tests/test_docs_guides.py``); here its
TOML example goes through the settings code and ``assemble.dkim_policy``, as ``spoolmail run``
would, with keys made in ``tmp_path`` in place of ``/etc/spoolmail/dkim``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import dkim as dkimpy
import pytest

from spoolmail._cli.assemble import dkim_policy
from spoolmail._cli.dkim import keygen
from spoolmail._cli.settings import load_settings
from spoolmail._core.dkim import DkimAlgorithm, DkimKey
from spoolmail.exceptions import ConfigurationError

PAGE = Path(__file__).resolve().parent.parent / "docs" / "dkim.md"
_TOML = re.compile(r"^```toml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_KEYS = "/etc/spoolmail/dkim/"
# The selectors of the page's file and the key each is made with (`dkim keygen --algorithm`).
_ALGORITHMS = {"2026a": "rsa", "rsa2026": "rsa", "ed2026": "ed25519"}


def _block() -> str:
    [block] = _TOML.findall(PAGE.read_text(encoding="utf-8"))
    return str(block)


def _keys(folder: Path) -> dict[str, Path]:
    return {
        selector: keygen("example.com", selector, algorithm=algorithm, out_dir=folder)[0]
        for selector, algorithm in _ALGORITHMS.items()
    }


def _settings_file(tmp_path: Path, block: str) -> Path:
    assert block.count(_KEYS) == len(_ALGORITHMS)
    path = tmp_path / "spoolmail.toml"
    path.write_text(block.replace(_KEYS, f"{(tmp_path / 'keys').as_posix()}/"), encoding="utf-8")
    return path


def test_the_settings_file_loads_and_signs(tmp_path: Path) -> None:
    keys = _keys(tmp_path / "keys")
    settings = load_settings(_settings_file(tmp_path, _block()), {})
    policy = dkim_policy(settings)
    assert policy is not None
    assert [(s.domain, s.selector, s.key.algorithm) for s in policy.signers] == [
        ("example.com", "2026a", DkimAlgorithm.RSA_SHA256),
        ("example.org", "rsa2026", DkimAlgorithm.RSA_SHA256),
        ("example.org", "ed2026", DkimAlgorithm.ED25519_SHA256),
    ]
    records = {
        f"{selector}._domainkey.example.org.".encode(): DkimKey.from_pem(path.read_bytes())
        for selector, path in keys.items()
    }

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return records[name].txt_record().encode()

    message = b"From: app@example.org\r\nTo: ops@example.net\r\nSubject: both\r\n\r\nhello\r\n"
    fields = policy.sign(message, now=datetime.now(UTC))
    assert fields.count(b"DKIM-Signature:") == 2  # RSA and Ed25519 side by side, as the page says
    assert dkimpy.verify(fields + message, dnsfunc=dns)
    # dkimpy checks the first signature; the second, put first, verifies too.
    rsa, ed = fields.split(b"DKIM-Signature:")[1:]
    assert dkimpy.verify(b"DKIM-Signature:" + ed + message, dnsfunc=dns)
    assert dkimpy.verify(b"DKIM-Signature:" + rsa + message, dnsfunc=dns)


@pytest.mark.parametrize(
    "line",
    [
        line
        for line in _block().splitlines()
        if line.startswith("# ") and "=" in line and "[...]" not in line
    ],
)
def test_each_optional_key_as_written_is_accepted(tmp_path: Path, line: str) -> None:
    """The commented keys, uncommented with the values shown, load for the RSA key of 2026a."""
    _keys(tmp_path / "keys")
    name = line[2:].split("=", maxsplit=1)[0].strip()
    block = _block().replace(line, line[2:], 1)
    policy = dkim_policy(load_settings(_settings_file(tmp_path, block), {}))
    assert policy is not None
    [signer] = policy.signers_for("example.com")
    if name == "expire_after":
        assert signer.expire_after is not None
        assert signer.expire_after.days == 30
    elif name == "canonicalization":
        assert (signer.header_canonicalization.value, signer.body_canonicalization.value) == (
            "relaxed",
            "relaxed",
        )
    else:
        assert name == "algorithm"
        assert signer.key.algorithm is DkimAlgorithm.RSA_SHA256


def test_a_bad_expire_after_is_named_once(tmp_path: Path) -> None:
    """The page says ``expire_after`` is a time with its unit: a bare ``"0"`` is refused, and
    the error names the table once (it was said twice, wrapped in its own prefix)."""
    _keys(tmp_path / "keys")
    block = _block().replace('# expire_after = "30d"', 'expire_after = "0"', 1)
    assert 'expire_after = "0"' in block
    with pytest.raises(ConfigurationError) as caught:
        dkim_policy(load_settings(_settings_file(tmp_path, block), {}))
    assert str(caught.value).startswith('dkim."example.com".expire_after')
    assert str(caught.value).count('dkim."example.com"') == 1
