"""``python -m bench`` (``make bench``): every offline benchmark, each printing its figures."""

from __future__ import annotations

import importlib

#: Benchmarks that need no Kafka. Each module has a ``main()`` that prints its figures.
OFFLINE = ("bench.envelope_bench", "bench.policy_bench", "bench.audit_bench")


def main() -> None:
    for name in OFFLINE:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            print(f"{name}: not present yet")
            continue
        print(f"== {name}")
        module.main()


if __name__ == "__main__":
    main()
