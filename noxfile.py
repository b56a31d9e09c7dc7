"""Project tasks: ``nox -s tests`` (the suite), ``lint``, ``typecheck``, ``docs``, ``install``,
``bench``, ``bench_postfix``, ``torture``, ``crashpoints``.

``nox`` with no arguments runs lint, typecheck and tests. CI (``.ci/run``) runs every session
except ``bench``, ``bench_postfix`` and ``torture`` (half a minute or more; for a release, or a
change to how outcomes are committed) and ``crashpoints`` (the suite runs those points already;
the session prints their figures).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit, property, integration (aiosmtpd, dnsmasq) and docs examples."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx, MyST, furo) into docs/_build/html, strict: a warning, a
    broken link or anchor, or a reference to a name that does not exist fails the build."""
    session.install(
        "sphinx>=8",
        "myst-parser>=4",
        "furo>=2024.8.6",
        "sphinxcontrib-mermaid>=1.0",
        "-e",
        ".[server,django,dkim]",
    )
    session.run(
        "sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/ (configured in pyproject.toml)."""
    session.install("mypy>=1.10", "-e", ".[test]")
    session.run("mypy")


@nox.session
@nox.parametrize("setuptools_first", ["none", "newest"])
def install(session: nox.Session, setuptools_first: str) -> None:
    """``import spoolmail`` in a fresh venv, and in one where the newest setuptools came first.

    PyFilesystem2 2.4.16 imports pkg_resources, gone in setuptools 82 (docs/design.md#dependencies):
    installing spoolmail must bring a setuptools it can use.
    """
    if setuptools_first == "newest":
        session.install("--upgrade", "setuptools>=82")
    session.install(".")
    session.run(
        "python",
        "-W",
        "error",
        "-c",
        "import importlib.metadata as m, spoolmail; spoolmail.Spool('mem://').close(); "
        "v = m.version('setuptools'); assert int(v.split('.')[0]) < 82, v; print('setuptools', v)",
    )


# Benchmarks that ``bench`` leaves out: each has its own session.
SEPARATE_BENCHMARKS = {"bench_postfix.py"}


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print the figures the issues name (not pass/fail tests).

    Every ``bench/bench_*.py`` with the same arguments, except the Postfix comparison
    (``bench_postfix``), which needs root and its own arguments.
    """
    session.install("-e", ".[test]")
    for script in sorted(__import__("pathlib").Path("bench").glob("bench_*.py")):
        if script.name not in SEPARATE_BENCHMARKS:
            session.run("python", str(script), *session.posargs)


@nox.session
def bench_postfix(session: nox.Session) -> None:
    """spoolmail against Postfix, path by path, into one smtp-sink (issue 12; bench/README.md).

    Needs root: it installs Debian's postfix if missing (debconf "No configuration") and runs a
    private instance on 127.0.0.1, removed at the end. spoolmail runs on Debian's python3, in
    a venv the script makes with the checkout installed (``--python current``: on nox's own).
    ``nox -s bench_postfix -- --pairs 1 --paths drain,flush`` passes arguments on (``--help``
    lists them).
    """
    session.install("-e", ".[test]")
    session.run("python", "bench/bench_postfix.py", *session.posargs)


@nox.session
def torture(session: nox.Session) -> None:
    """The smart-host crash test at full size: 2,000 messages relayed, 30 SIGKILLs.

    The suite runs it at CI size (200 messages, 10 kills). It prints the duplicates and the
    window at each kill; replay a failure with ``SPOOLMAIL_KILL_SEED``. ``nox -s torture --
    -k ...`` passes pytest arguments on.
    """
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-s",
        "-p",
        "no:cacheprovider",
        "tests/integration/test_kill_smart_host.py",
        *session.posargs,
        env={
            "SPOOLMAIL_KILL_MESSAGES": os.environ.get("SPOOLMAIL_KILL_MESSAGES", "2000"),
            "SPOOLMAIL_KILLS": os.environ.get("SPOOLMAIL_KILLS", "30"),
            "SPOOLMAIL_KILL_DEADLINE": os.environ.get("SPOOLMAIL_KILL_DEADLINE", "900"),
        },
    )


@nox.session
def crashpoints(session: nox.Session) -> None:
    """The crash-point test alone, with its figures: a kill at every file-changing system call.

    The suite runs every point too (about a minute, needs ``strace``); this prints the calls a
    clean run makes per thread, which thread each kill hit, what stayed masked, and the windows
    and duplicates (docs/design.md#crash-safety). ``nox -s crashpoints -- -k queued`` passes
    pytest arguments on.
    """
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-s",
        "-p",
        "no:cacheprovider",
        "tests/integration/test_crash_points.py",
        *session.posargs,
    )
