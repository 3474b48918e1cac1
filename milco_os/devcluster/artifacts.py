"""Downloading and unpacking the published server zips and module jars (cached, verified)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from milco_os.devcluster.errors import ClusterError

MAVEN_URL = "https://repo1.maven.org/maven2"


def cache_home() -> Path:
    """``$MILCO_OS_HOME``, else ``~/.cache/milco-os``."""
    return Path(os.environ.get("MILCO_OS_HOME") or Path.home() / ".cache" / "milco-os")


def run_root() -> Path:
    """Where node folders live; readable by the unprivileged user nodes run as."""
    if env := os.environ.get("MILCO_OS_RUN_DIR"):
        return Path(env)
    # Root's home is not readable by other users, so nodes started by root live in /var/tmp.
    return Path("/var/tmp/milco-os") if os.geteuid() == 0 else cache_home() / "run"


def maven_url(group: str, artifact: str, version: str, ext: str) -> str:
    base = os.environ.get("MILCO_OS_MAVEN_URL", MAVEN_URL).rstrip("/")
    return f"{base}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"


def _fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read().decode().split()[0].strip()


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` once, verified against ``sha256`` when given (Elasticsearch
    publishes no checksums to Maven Central, so its digests are pinned), else Maven's
    ``.sha1`` file."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        expected = sha256 or _fetch_text(url + ".sha1")
        digest = hashlib.sha256() if sha256 else hashlib.sha1()
        with urllib.request.urlopen(url, timeout=600) as resp, tmp.open("wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ClusterError(f"cannot download {url}: {exc}") from None
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise ClusterError(f"checksum mismatch for {url}: got {digest.hexdigest()}, "
                           f"expected {expected}")
    tmp.rename(dest)
    return dest


def unpack(zip_path: Path, staging: Path) -> Path:
    """Extract ``zip_path`` into a fresh ``staging`` folder; return the top folder inside."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(staging)
        for info in archive.infolist():  # zipfile drops the executable bits
            mode = info.external_attr >> 16
            if mode:
                (staging / info.filename).chmod(mode & 0o777)
    return next(staging.iterdir())


def make_world_readable(path: Path) -> None:
    """``path`` and the parents we own get ``o+rx`` (nodes run as another user when root)."""
    path.mkdir(parents=True, exist_ok=True)
    for p in (path, *path.parents):
        if p == Path("/") or p.stat().st_uid != os.geteuid():
            break
        p.chmod(p.stat().st_mode | 0o755)


def finish_install(staging: Path, root: Path, home: Path) -> Path:
    """Move the assembled ``root`` (inside ``staging``) to ``home`` and mark it complete."""
    make_world_readable(home.parent)
    shutil.rmtree(home, ignore_errors=True)
    root.rename(home)
    shutil.rmtree(staging)
    (home / ".complete").touch()
    return home
