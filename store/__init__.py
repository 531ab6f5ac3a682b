"""The store: models, sessions, repository functions and migrations."""
