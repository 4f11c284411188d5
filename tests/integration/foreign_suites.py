"""Test files of the frameworks we plug into, taken from their sdists at test time.

Django, cachelib and Flask-Caching judge their own backends with test suites that
ship in their source distributions, not in their wheels. We run those suites against
our backends, and never commit their files: the sdist of the version installed here
is downloaded with pip (once; kept under the virtualenv) and the wanted folder is
extracted next to it. A failed download fails the run: it never turns into a skip.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Inside the virtualenv, so `make clean` removes it and a fresh clone downloads again.
SUITES_DIR = Path(sys.prefix) / "foreign-suites"


def sdist_folder(distribution: str, folder: str) -> Path:
    """``folder`` (e.g. ``tests/cache``) of the sdist of the installed ``distribution``."""
    version = importlib.metadata.version(distribution)
    target = SUITES_DIR / f"{distribution.lower()}-{version}"
    extracted = target / folder
    if extracted.is_dir():
        return extracted
    SUITES_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SUITES_DIR) as scratch:
        archive = _download_sdist(distribution, version, Path(scratch))
        staging = Path(scratch) / "staging"
        _extract(archive, folder, staging)
        if not (staging / folder).is_dir():
            raise RuntimeError(f"{archive.name} has no folder {folder!r}")
        # Another run may have finished first; its copy is as good as ours.
        if not extracted.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return extracted


def _download_sdist(distribution: str, version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(into),
        f"{distribution}=={version}",
    ]
    done = subprocess.run(  # noqa: S603 - our own interpreter's pip, fixed arguments
        command, capture_output=True, text=True, timeout=600, check=False
    )
    archives = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(
            f"could not download the sdist of {distribution}=={version}, whose test "
            f"suite this run needs (`{' '.join(command[2:])}` exited {done.returncode}):\n"
            f"{tail}"
        )
    return archives[0]


def _extract(archive: Path, folder: str, into: Path) -> None:
    """Extract only ``<top>/<folder>/`` of the archive, as ``into/<folder>``."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            _, _, rest = member.name.partition("/")
            if (rest == folder or rest.startswith(folder + "/")) and (
                member.isfile() or member.isdir()
            ):
                member.name = rest
                members.append(member)
        tar.extractall(into, members=members, filter="data")
