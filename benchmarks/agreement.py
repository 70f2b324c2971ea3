"""How closely the engine agrees with the event-driven reference, on the test suite's cases.

Run from the repository root: ``PYTHONPATH=. python benchmarks/agreement.py``. Prints, for each algorithm
and transport, the messages both simulators sent, how many ended differently, the largest difference of a
queue, landing or end time, and the largest difference of a model parameter.
"""

import numpy as np

from divjax.state import flatten_models
from tests.test_reference import CASES, engine_messages, reference_messages, run_both

TIMES = ("queued_at", "landed_at", "ended_at")


def main() -> None:
    print(f"{'case':28s} {'messages':>8s} {'fate diffs':>10s} {'max |dt| (s)':>12s} {'max |dparam|':>12s}")
    for name, case in CASES.items():
        pair = run_both(case.config, case.network, case.ticks)
        eng, ref = engine_messages(pair), reference_messages(pair.ref)
        both = set(eng) & set(ref)
        worst = max((abs(eng[k][f] - ref[k][f]) for k in both for f in TIMES
                     if eng[k][f] is not None and ref[k][f] is not None), default=0.0)
        fates = sum(eng[k]["fate"] != ref[k]["fate"] for k in both) + len(set(eng) ^ set(ref))
        param = np.abs(np.asarray(flatten_models(pair.state.params)) - pair.ref.params).max()
        print(f"{name:28s} {len(ref):8d} {fates:10d} {worst:12.2e} {param:12.1e}")


if __name__ == "__main__":
    main()
