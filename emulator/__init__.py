"""The local AWS emulator (moto) as the demo, tests and benchmark use it: moto taught what it lacks, a server
on 127.0.0.1, and a realistic seeded fleet. Never imported by the Lambda code."""
