"""Database models, engine and migrations glue."""
