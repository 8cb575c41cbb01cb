"""The fault suite: seeded faults on 30% of every AWS send the handlers make (below botocore's retry layer, so its
retries happen), each failed invocation retried with the same event as Lambda would (twice), and then, with the
faults off, what a subscriber and an auditor see (emulator/chaos.py). `python -m bench.reliability` runs more."""

from __future__ import annotations

import random

import pytest

from emulator import chaos
from emulator.chaos import Figures
from imds_enforcer.aws import clients
from imds_enforcer.handlers import launch_watch, usage_gate

pytestmark = pytest.mark.usefixtures("aws")

SEED = 20261201
RUNS = 5


@pytest.fixture
def account(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    chaos.prepare_account()
    for name in ("LEDGER_TABLE_NAME", "ENFORCEMENT_MODE", "REPORT_TOPIC_ARN"):
        monkeypatch.setenv(name, __import__("os").environ[name] if name != "REPORT_TOPIC_ARN" else "")
    clients.reset_clients()


def check(figures: Figures) -> None:
    assert figures.faults > 0
    assert figures.accounted == figures.present
    assert figures.wrongful == 0
    assert figures.unreported == 0
    assert figures.untagged_unwatched == 0


@pytest.mark.usefixtures("account")
def test_the_gate_under_faults_accounts_for_every_instance_and_loses_no_switch() -> None:
    rng = random.Random(SEED)
    total = Figures()
    for _ in range(RUNS):
        total.add(chaos.gate_run(rng=rng, handler=usage_gate.handler))
    check(total)
    assert total.switches > 0  # faults or not, most ready instances are switched


@pytest.mark.usefixtures("account")
def test_the_launch_watch_under_faults_accounts_for_every_instance_and_loses_no_switch() -> None:
    rng = random.Random(SEED + 1)
    total = Figures()
    for _ in range(RUNS):
        total.add(chaos.launch_run(rng=rng, handler=launch_watch.handler))
    check(total)
    assert total.switches > 0
