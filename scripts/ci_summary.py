"""Counts what CI's pytest runs did, from their JUnit XML reports: tests run, passed, failed, skipped (with reasons).

Run: python scripts/ci_summary.py NAME=report.xml [NAME=report.xml ...]
Prints one line per run, every skipped test with its reason, and a closing 'N passed, N failed, N skipped' line.
Exits 1 when a report is missing or unreadable, or when no test ran at all.
"""

import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.passed + self.failed


def count(report_path: str) -> Counts:
    """Each <testcase> is one test: failed with a <failure> or <error> child, skipped with <skipped>, else passed."""
    counts = Counts()
    for case in ElementTree.parse(report_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            counts.failed += 1
        elif skipped is not None:
            counts.skipped.append(f"{name}: {skipped.get('message', '')}")
        else:
            counts.passed += 1
    return counts


def main(arguments: list[str]) -> int:
    total = Counts()
    for argument in arguments:
        name, _, path = argument.partition("=")
        try:
            counts = count(path)
        except (OSError, ElementTree.ParseError) as error:
            print(f"CI FAILURE: no readable test report for {name} ({error})", file=sys.stderr)
            return 1
        print(f"{name}: {counts.ran} tests ran ({counts.passed} passed, {counts.failed} failed), {len(counts.skipped)} skipped")
        for line in counts.skipped:
            print(f"  skipped {line}")
        total.passed += counts.passed
        total.failed += counts.failed
        total.skipped += counts.skipped
    if total.ran == 0:
        print("CI FAILURE: no test ran", file=sys.stderr)
        return 1
    print(f"CI: {total.passed} passed, {total.failed} failed, {len(total.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
