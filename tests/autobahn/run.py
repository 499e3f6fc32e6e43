"""Runs the Autobahn TestSuite cases (through kosoku) against one WebSocket URL.

Usage: run.py WS_URL REPORT_DIR

AUTOBAHN_CASES=1.*,7.5.1 narrows the run to those cases (for diagnosis; the
check on the number of cases is then skipped).

Sections 12 and 13 (permessage-deflate) are excluded: the server does not offer
compression. kosoku counts a case as passed when both its message verdict and
its close verdict are OK, NON-STRICT or INFORMATIONAL; anything else (FAILED,
UNIMPLEMENTED, WRONG CODE, UNCLEAN, ...) fails the run. Exit status: 0 when
every case passed and the expected number of cases ran, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time

import kosoku

EXCLUDE = ["12.*", "13.*"]
# Cases kosoku 0.1.0 runs outside sections 12 and 13. Fewer means cases were
# skipped (a changed glob, an aborted run): that is a failure, not a pass.
EXPECTED_CASES = 301
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def case_key(result) -> list[int]:
    return [int(part) for part in result.case_id.split(".")]


def short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def describe(result) -> str:
    lines = [
        f"  case {result.case_id}: behavior={result.behavior.value} "
        f"close={result.behavior_close.value}",
        f"    description: {result.description.strip()}",
        f"    expectation: {result.expectation.strip()}",
        f"    result:      {result.result}",
        f"    close:       {result.result_close}",
        f"    remote close code {result.remote_close_code} "
        f"reason {result.remote_close_reason!r}; clean={result.was_clean} "
        f"({result.was_not_clean_reason or '-'})",
        f"    expected:    {short(result.expected)}",
        f"    received:    {short(result.received)}",
    ]
    return "\n".join(lines)


async def main(url: str, report_dir: str) -> int:
    only = [c for c in os.environ.get("AUTOBAHN_CASES", "").split(",") if c] or None
    started = time.monotonic()
    failed_run = False
    try:
        results = await kosoku.run_fuzzingclient(url, only, EXCLUDE, concurrency=1)
    except kosoku.FailureError as failure:
        print(f"kosoku: {failure}", file=sys.stderr)
        results = failure.results
        failed_run = True
    elapsed = time.monotonic() - started
    results = sorted(results, key=case_key)

    try:
        from kosoku._report import write_reports

        write_reports(results, report_dir)
        print(f"autobahn: HTML/JSON reports in {report_dir}/")
    except Exception as e:  # the reports are a convenience, not the verdict
        print(f"autobahn: could not write reports: {e}", file=sys.stderr)

    verdicts = collections.Counter(r.behavior.value for r in results)
    close_verdicts = collections.Counter(r.behavior_close.value for r in results)
    failures = [r for r in results if not r.passed]
    for r in results:
        if r.behavior.value != "OK" or r.behavior_close.value != "OK":
            mark = "FAIL" if not r.passed else "pass"
            print(
                f"  {mark} {r.case_id}: behavior={r.behavior.value} "
                f"close={r.behavior_close.value}"
            )
    print(
        "autobahn verdicts — behavior "
        + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
        + "; close "
        + ", ".join(f"{k} {v}" for k, v in sorted(close_verdicts.items()))
    )
    print(
        f"autobahn summary — {len(results)} cases in {elapsed:.1f} s: "
        f"{len(results) - len(failures)} passing, {len(failures)} failing"
    )

    if failures:
        print("autobahn: failing cases:", file=sys.stderr)
        for r in failures:
            print(describe(r), file=sys.stderr)
        return 1
    if failed_run:
        print("autobahn: kosoku reported a failure", file=sys.stderr)
        return 1
    if only is None and len(results) != EXPECTED_CASES:
        print(
            f"autobahn: {len(results)} cases ran, expected {EXPECTED_CASES}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
