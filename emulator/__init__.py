"""The local AWS emulator (moto) as the demo, tests and benchmark use it: moto taught what it lacks, a server
on 127.0.0.1, and a realistic seeded fleet. Never imported by the Lambda code."""

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
# The usage gate's schedule rule, as events from it name it.
GATE_RULE = "imds-enforcer-usage-gate"
