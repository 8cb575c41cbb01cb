"""`python -m bench`: every benchmark in turn (the gate's only once it is built)."""

from __future__ import annotations

import importlib

from bench import bench_launch


def main() -> None:
    bench_launch.main()
    try:
        gate = importlib.import_module("bench.bench_gate")
    except ModuleNotFoundError as error:
        if error.name != "bench.bench_gate":
            raise  # the gate benchmark exists but cannot import something: a real failure
        print("\nUsage gate benchmark: not built yet (bench/bench_gate.py is missing)")
        return
    print()
    gate.main()


if __name__ == "__main__":
    main()
