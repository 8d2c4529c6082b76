"""Django's SQLite backend, with the writers of one process queued on a lock of their own.

SQLite lets one transaction write at a time. A writer that finds the database locked waits in
SQLite's busy handler, which polls, sleeping 1, 2, 5, 10 ... up to 100 ms between tries, so
under concurrent turns a writer often sleeps on long after the lock came free: that sleep was
most of a busy server's p95 and p99. Here a transaction of this process first takes a
threading lock, which hands over the moment it is released, and only then SQLite's lock, for
which it now waits only on other processes (their order still comes from SQLite and its busy
timeout). Writes outside a transaction (autocommit) are left to SQLite alone.
"""

import logging
import threading

from django.db.backends.sqlite3 import base, features

logger = logging.getLogger(__name__)

# One per process: the project has one database.
_writer = threading.Lock()


class DatabaseFeatures(features.DatabaseFeatures):
    # The chat turn's statements use RETURNING (sessions_app.sql).
    minimum_database_version = (3, 35)


class DatabaseWrapper(base.DatabaseWrapper):
    features_class = DatabaseFeatures
    _holds_writer = False

    def _start_transaction_under_autocommit(self):
        if self.transaction_mode not in ("IMMEDIATE", "EXCLUSIVE"):
            # A deferred transaction takes SQLite's write lock only when it first writes.
            return super()._start_transaction_under_autocommit()
        # Bounded like SQLite's own wait; past it, SQLite's busy timeout decides as before.
        timeout = self.settings_dict["OPTIONS"].get("timeout", 5)
        acquired = _writer.acquire(timeout=timeout)
        if not acquired:
            logger.warning("SQLite writer lock not free after %s s; waiting on SQLite's", timeout)
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            if acquired:
                _writer.release()
            raise
        self._holds_writer = acquired

    def _release_writer(self) -> None:
        if self._holds_writer:
            self._holds_writer = False
            _writer.release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_writer()
