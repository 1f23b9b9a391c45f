"""Another program of the same user that uses procthrottle: makes and removes anonymous
semaphores and rate limiters in a loop until SIGTERM, then exits normally (leaving nothing).

Run by the `other_procthrottle_user` fixture (tests/conftest.py) beside the leak checks, which
must count only what their own test made. Prints ``ready`` once it has made its first objects.
"""

from __future__ import annotations

import signal
import time

from procthrottle import ProcessSemaphore, RateLimiter

stop = False


def _stop(signum: int, frame: object) -> None:
    global stop
    stop = True


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    kept = ProcessSemaphore(1), RateLimiter(1000)  # in use for the whole run
    rounds = 0
    while not stop:
        sem, limiter = ProcessSemaphore(2), RateLimiter(1000, burst=10)
        with sem:
            limiter.acquire()
        if rounds == 0:
            print("ready", flush=True)
        time.sleep(0.002)  # both exist a while: a snapshot taken now sees them
        sem.close()
        limiter.close()
        rounds += 1
        time.sleep(0.002)
    for obj in kept:
        obj.close()
    print(rounds, flush=True)


if __name__ == "__main__":
    main()
