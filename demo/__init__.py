"""The local demo (`python -m demo`): a moto server on 127.0.0.1, a seeded fleet with 14 days of metrics, the real
handlers called as Lambda would call them, and the reports read back from a queue subscribed to the topic."""

from __future__ import annotations
