"""Many Ray tasks from a driver that stays small: a bounded number in flight, results as they come."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator


def in_flight_limit(ray) -> int:
    """Tasks kept submitted at once: twice the cluster's CPUs, so none idles while the driver collects."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def run_bounded(ray, task, arguments: Iterable[tuple], limit: int | None = None) -> Iterator[tuple[int, object]]:
    """Submit `task.remote(*args)` for each argument tuple, at most `limit` at a time; yield (index, result)
    in completion order. A failed task raises here, with its error."""
    limit = limit or in_flight_limit(ray)
    pending = iter(enumerate(arguments))
    refs: dict = {}
    exhausted = False
    while refs or not exhausted:
        while not exhausted and len(refs) < limit:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            index, args = item
            refs[task.remote(*args)] = index
        if not refs:
            break
        ready, _ = ray.wait(list(refs), num_returns=1)
        index = refs.pop(ready[0])
        yield index, ray.get(ready[0])


def progress(log: Callable[[str], None], what: str, total: int, every: int = 10):
    """A function to call once per finished item that logs `what k/total` about `every` times in all."""
    step = max(1, total // every)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done % step == 0 or done == total:
            log(f"{what} {done}/{total}")

    return tick
