"""The nearest thing to pip-audit when its advisory feed cannot be reached.

On these machines pypi.org answers the project endpoint (``/pypi/<name>/json``) but not the per-release one
(``/pypi/<name>/<version>/json``) that pip-audit asks, so pip-audit audits nothing. The project endpoint carries
PyPI's advisories (from the OSV database) for the project's *latest* release. So: a dependency installed at its
latest release is audited exactly; one pinned below it is reported as not audited, by name. Nothing is guessed.

Usage (the Makefile's ``audit`` target calls it for what pip-audit skipped): python .ci/audit_latest.py name==version...
Exit status 1 when a known vulnerability applies.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Finding:
    name: str
    version: str
    latest: str | None = None
    vulnerabilities: list[tuple[str, str]] = field(default_factory=list)  # (id, fixed in)
    error: str | None = None

    @property
    def audited(self) -> bool:
        return self.error is None and self.latest == self.version


def _check(name: str, version: str) -> Finding:
    finding = Finding(name, version)
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=5) as response:
            data = json.load(response)
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        finding.error = str(exc)
        return finding
    finding.latest = data["info"]["version"]
    if finding.audited:
        finding.vulnerabilities = [
            (v.get("id", "?"), ", ".join(v.get("fixed_in") or []) or "no release yet")
            for v in data.get("vulnerabilities") or []
            if not v.get("withdrawn")
        ]
    return finding


def audit(pins: list[tuple[str, str]]) -> list[Finding]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda pin: _check(*pin), pins))


def main(argv: list[str]) -> int:
    pins = [tuple(arg.split("==", 1)) for arg in argv if "==" in arg]
    findings = audit(pins)  # type: ignore[arg-type]
    vulnerable = [f for f in findings if f.vulnerabilities]
    for finding in vulnerable:
        for vuln, fixed in finding.vulnerabilities:
            print("audit (PyPI latest):", "VULNERABLE", finding.name, finding.version, vuln, "- fixed in", fixed)
    audited = [f for f in findings if f.audited]
    behind = sorted(f"{f.name} {f.version} (latest {f.latest})" for f in findings if not f.audited and not f.error)
    unreachable = sorted(f.name for f in findings if f.error)
    print(
        f"audit (PyPI latest): {len(audited)} of {len(findings)} audited against PyPI's advisories for their "
        f"installed (latest) release, {sum(len(f.vulnerabilities) for f in vulnerable)} known vulnerabilities"
    )
    if behind:
        print("audit (PyPI latest): NOT AUDITED, pinned below the latest release:", "; ".join(behind))
    if unreachable:
        print("audit (PyPI latest): NOT AUDITED, pypi.org did not answer for:", " ".join(unreachable))
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
