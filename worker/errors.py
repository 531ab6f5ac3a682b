"""Which errors are a dependency out of reach, and which are the data's fault.

A dependency out of reach (the store's connection, Redis, the broker) is transient: what failed is
tried again later, with backoff and a bound. What the store refuses for the data itself cannot get
better by waiting: it is dead-lettered at once, item by item where the items can be told apart.
"""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError


class Stalled(TimeoutError):
    """A dependency did not answer within its bound (it stopped answering without closing)."""


# (OperationalError covers a lost connection, a refused one and SQLite's "database is locked".)
TRANSIENT = (Stalled, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
             redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KombuOperationalError)
DATA_ERRORS = (sqlalchemy.exc.DataError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
