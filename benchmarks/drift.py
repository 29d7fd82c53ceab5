"""False-alarm rate and detection delay of the service's drift alarm, by simulation.

Scores are standard normal for good parts (any continuous law gives the same figures: the
test uses ranks only). For each validation size ``n`` (21 is bottle's default split), the
image threshold is the conformal one at alpha 0.05 (the guarantee holds from n = 19), and:

1. per check: the share of independent checks (fresh validation draw, 100 passed parts) that
   alarm with no drift; the test promises at most ``--alpha``;
2. long runs: a line makes ``--parts`` good parts and the service checks after every passed
   part (overlapping windows, one calibration): the share of runs with at least one alarm;
3. detection: after a shift of the scores by 0.5, 1 and 2 standard deviations, how many
   passed parts until the alarm (median over runs; windows start clean).

Usage: ``.venv/bin/python benchmarks/drift.py [--alpha 0.001] [--checks 100000]``
"""

from __future__ import annotations

import argparse

import numpy as np

from defectmap.calibrate.conformal import image_threshold
from defectmap.calibrate.drift import drift_test


def passed(rng: np.random.Generator, threshold: float, size: int, shift: float = 0.0):
    out = np.empty(0)
    while out.size < size:
        draw = rng.normal(shift, 1.0, 2 * size)
        out = np.concatenate([out, draw[draw <= threshold]])
    return out[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--parts", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"alpha {args.alpha}, window {args.window} passed parts")
    print("| validation images | alarms per check, no drift | runs of "
          f"{args.parts} parts with an alarm | parts to alarm, shift 0.5 / 1 / 2 sd |")
    print("|---|---|---|---|")
    for n_val in (21, 100, 500):
        alarms = 0
        for _ in range(args.checks):
            val = np.sort(rng.normal(size=n_val))
            t = image_threshold(val, 0.05)[0]
            alarms += drift_test(val, t, passed(rng, t, args.window), args.window,
                                 args.alpha).alarm
        runs_alarmed = 0
        for _ in range(args.runs):
            val = np.sort(rng.normal(size=n_val))
            t = image_threshold(val, 0.05)[0]
            stream = passed(rng, t, args.parts)
            for end in range(args.window, args.parts + 1):
                if drift_test(val, t, stream[end - args.window:end], args.window,
                              args.alpha).alarm:
                    runs_alarmed += 1
                    break
        delays = []
        for shift in (0.5, 1.0, 2.0):
            found = []
            for _ in range(max(20, args.runs // 10)):
                val = np.sort(rng.normal(size=n_val))
                t = image_threshold(val, 0.05)[0]
                stream = np.concatenate([passed(rng, t, args.window),
                                         passed(rng, t, 1000, shift)])
                delay = 1000
                for extra in range(1, 1001):
                    end = args.window + extra
                    if drift_test(val, t, stream[end - args.window:end], args.window,
                                  args.alpha).alarm:
                        delay = extra
                        break
                found.append(delay)
            delays.append(f"{np.median(found):.0f}")
        print(f"| {n_val} | {alarms / args.checks:.5f} ({alarms} of {args.checks}) | "
              f"{runs_alarmed / args.runs:.3f} | {' / '.join(delays)} |", flush=True)


if __name__ == "__main__":
    main()
