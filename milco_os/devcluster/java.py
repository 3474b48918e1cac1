"""Finding a JDK whose version a distribution runs on, without assuming one path."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from milco_os.devcluster.errors import ClusterError

# Where package managers and installers put JDKs (Debian/Ubuntu, RHEL, Temurin, SDKMAN, macOS).
JDK_FOLDERS = ("/usr/lib/jvm/*", "/usr/java/*", "/opt/java/*", "/opt/*jdk*",
               "~/.sdkman/candidates/java/*", "~/.jdks/*",
               "/Library/Java/JavaVirtualMachines/*/Contents/Home")
ENV_VARS = ("MILCO_OS_JAVA_HOME", "JAVA_HOME", "OPENSEARCH_JAVA_HOME", "ES_JAVA_HOME")


def java_major(home: Path) -> int:
    """The major version of the JDK in ``home`` (0 when there is none)."""
    release = home / "release"
    text = release.read_text(errors="replace") if release.is_file() else ""
    if not (match := re.search(r'JAVA_VERSION="(\d+)(?:\.(\d+))?', text)):
        binary = home / "bin" / "java"
        if not binary.is_file():
            return 0
        try:
            text = subprocess.run([str(binary), "-version"], capture_output=True, text=True,
                                  timeout=30).stderr
        except (OSError, subprocess.TimeoutExpired):
            return 0
        if not (match := re.search(r'version "(\d+)(?:\.(\d+))?', text)):
            return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def candidates() -> list[Path]:
    """JDK homes to consider, the user's own choices first."""
    found = [Path(v) for v in map(os.environ.get, ENV_VARS) if v]
    if java := shutil.which("java"):
        found.append(Path(java).resolve().parent.parent)
    for pattern in JDK_FOLDERS:
        found += sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    unique: dict[Path, None] = {}
    for home in found:
        if (home / "bin" / "java").is_file():
            unique.setdefault(home.resolve(), None)
    return list(unique)


def find_java(min_major: int, max_major: int | None = None, what: str = "the server") -> Path:
    """A JDK home with ``min_major <= version <= max_major``: the first user choice that fits,
    else the newest one found. The error says exactly what to install."""
    fitting = [(java_major(h), h) for h in candidates()]
    fitting = [(v, h) for v, h in fitting if v >= min_major and (max_major is None
                                                                  or v <= max_major)]
    if fitting:
        chosen = {Path(v).resolve() for v in map(os.environ.get, ENV_VARS) if v}
        preferred = [h for _, h in fitting if h in chosen]
        return preferred[0] if preferred else max(fitting, key=lambda vh: vh[0])[1]
    wanted = f"{min_major}" + (f" to {max_major}" if max_major else " or newer")
    install = f"openjdk-{min_major}-jdk-headless" if min_major >= 17 else "openjdk-17-jdk-headless"
    raise ClusterError(
        f"{what} needs a JDK {wanted}, and none was found (looked at {', '.join(ENV_VARS)}, "
        f"PATH and {', '.join(JDK_FOLDERS[:3])}, ...): install one, e.g. "
        f"`apt-get install {install}` or Temurin {min_major} from adoptium.net, "
        "and point MILCO_OS_JAVA_HOME at it if it lives elsewhere")
