"""Time in the unit the API speaks: integer milliseconds since the epoch."""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
