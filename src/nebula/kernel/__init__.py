"""Shared kernel: configuration, database, secrets, auth. No domain logic lives here."""
