"""Every test reaches ``../shared`` through ``_shared.py`` (and the ``shared_dir`` fixture),
so that on a user's machine, where it is absent, each such test skips with a reason."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# A path built to the shared folder, or its override read from the environment.
DIRECT_ACCESS = re.compile(r"""/\s*["']shared["']|["']\.\./shared|["']shared/|MILCO_OS_SHARED""")


def test_no_test_module_builds_a_path_to_shared_itself() -> None:
    offenders = []
    for module in sorted(TESTS.glob("*.py")):
        if module.name in ("_shared.py", Path(__file__).name):
            continue
        for number, line in enumerate(module.read_text(encoding="utf-8").splitlines(), 1):
            if DIRECT_ACCESS.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{module.name}:{number}: {line.strip()}")
    assert not offenders, "use _shared.SHARED / shared_path or the shared_dir fixture:\n" + \
        "\n".join(offenders)


def test_the_guard_recognises_each_way_of_building_the_path() -> None:
    for line in ('SHARED = REPO.parent / "shared"', "open('../shared/data/x')",
                 'Path("shared/models")', 'os.environ["MILCO_OS_SHARED"]'):
        assert DIRECT_ACCESS.search(line), line
    assert not DIRECT_ACCESS.search('assert parts == ("shared", "data")')
