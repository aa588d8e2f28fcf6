"""PostgresStore: liteq's queue in a PostgreSQL database (needs the `postgres` extra)."""

from liteq.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
