"""Keeps sending a mix of the sample tasks, with a burst now and then so queues visibly back up.

Environment: ``PRODUCER_RATE`` (tasks per second, default 5), ``PRODUCER_BURST_EVERY`` (seconds between
bursts, default 120; 0 disables), ``PRODUCER_BURST_SIZE`` (tasks per burst, default 300).
Run as ``python -m sample_app.producer``; stops on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable

from sample_app.tasks import add, always_fails, flaky, poison, sleepy

# (weight, send): the mix a busy but mostly healthy application produces.
MIX: list[tuple[float, Callable[[], object]]] = [
    (60, lambda: add.delay(random.randint(0, 100), random.randint(0, 100))),
    (15, lambda: sleepy.delay(round(random.uniform(0.05, 2.0), 2))),
    (12, lambda: flaky.delay(0.5)),
    (3, lambda: flaky.delay(1.0)),  # always exhausts its retries: lands in dlq:sample.flaky
    (5, lambda: always_fails.delay()),
    (5, lambda: poison.delay()),  # rejected: dead-lettered into dead_letters on RabbitMQ
]


def send_one() -> None:
    weights = [w for w, _ in MIX]
    random.choices(MIX, weights=weights)[0][1]()


def main() -> None:
    rate = float(os.environ.get("PRODUCER_RATE", "5"))
    burst_every = float(os.environ.get("PRODUCER_BURST_EVERY", "120"))
    burst_size = int(os.environ.get("PRODUCER_BURST_SIZE", "300"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    elapsed_since_burst = 0.0
    try:
        while not stop.is_set():
            send_one()
            stop.wait(1.0 / rate)
            elapsed_since_burst += 1.0 / rate
            if burst_every and elapsed_since_burst >= burst_every:
                elapsed_since_burst = 0.0
                for _ in range(burst_size):
                    add.delay(1, 1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
