#!/usr/bin/env python3
"""Run the integration suite (unittest discovery over tests/integration/)
and write "PASSED FAILED SKIPPED" to --counts for tools/test to add up.

    MXD_BIN=build/bin/mxd MXSPOOL_BIN=build/bin/mxspool \
        python3 tests/integration/run.py [--pattern test_x.py] [-k name]
"""
import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


class TimedResult(unittest.TextTestResult):
    """Keeps each test's wall-clock time, so the slowest can be listed:
    the CI budget is kept by knowing where the minutes go."""

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.durations = getattr(self, "durations", [])
        self.durations.append((time.monotonic() - self._started, test.id()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", help="write 'passed failed skipped' here")
    ap.add_argument("--pattern", default="test_*.py")
    ap.add_argument("-k", dest="names", action="append", default=[],
                    help="only tests whose id contains this (repeatable)")
    args = ap.parse_args()

    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    if args.names:
        loader.testNamePatterns = ["*%s*" % n for n in args.names]
    suite = loader.discover(HERE, pattern=args.pattern, top_level_dir=HERE)
    t0 = time.monotonic()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, buffer=False,
                                     resultclass=TimedResult).run(suite)
    slowest = sorted(getattr(result, "durations", []), reverse=True)[:12]
    if slowest:
        print("slowest tests (of %.0f s in all):" % (time.monotonic() - t0))
        for seconds, name in slowest:
            print("  %6.1f s  %s" % (seconds, name))

    # A test can report twice (its body and its cleanup both fail): count
    # tests, not reports.
    bad = {t.id() for t, _ in result.failures + result.errors}
    bad |= {t.id() for t in result.unexpectedSuccesses}
    skipped_ids = {t.id() for t, _ in result.skipped} - bad
    failed = len(bad)
    skipped = len(skipped_ids)
    passed = max(0, result.testsRun - failed - skipped)
    if result.testsRun == 0:
        failed = 1  # a suite that ran nothing is a failure, not a pass
        print("integration: no tests were run")
    print("integration: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    if args.counts:
        with open(args.counts, "w") as f:
            f.write("%d %d %d\n" % (passed, failed, skipped))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
