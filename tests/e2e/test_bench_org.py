"""The organization benchmark at a tiny size, so it cannot rot: it seeds, audits in parallel and serially against a
moto server in a child process, and finds the calls per account-region at the floor."""

from __future__ import annotations

import pytest

from bench import bench_org

pytestmark = pytest.mark.e2e


def test_the_org_benchmark_runs_and_its_calls_stay_at_the_floor(capsys: pytest.CaptureFixture[str]) -> None:
    # Given 2 member accounts x 2 regions x 6 instances; When the benchmark runs
    argv = ["--accounts", "2", "--regions", "us-east-1,eu-west-1", "--instances", "6", "--metrics", "2"]
    bench = bench_org.main(argv)

    # Then both runs audited every account-region alike (it checks they agree), the management account too
    assert len(bench.parallel.result.results) == (2 + 1) * 2
    assert bench.parallel.result.complete
    assert bench.ratio > 0
    # And every member account-region made exactly the floor's calls, with one AssumeRole per account
    assert bench.at_floor
    assert bench.per_account_region()["DescribeInstances"] == (3, 3)
    assert bench.parallel.management_calls["AssumeRole"] == 2
    out = capsys.readouterr().out
    assert "ratio serial / parallel:" in out
    assert "at the floor (no per-instance call): yes" in out
