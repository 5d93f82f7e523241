"""What the comparison scripts share: nearest-rank percentiles, a report line in the format of
the taskmesh bench, and polling for a condition with a deadline."""
import time


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def report(name, values):
    print(f"{name:<44} n={len(values):<5} p50={pct(values, .5):>9.3f} ms  p99={pct(values, .99):>9.3f} ms  max={max(values):>9.3f} ms")


def wait_for(check, deadline=10.0, who="bench"):
    end = time.time() + deadline
    while time.time() < end:
        value = check()
        if value is not None:
            return value
        time.sleep(0.002)
    raise TimeoutError(f"{who}: condition not met")
