"""Local development: starts the project's own PostgreSQL and Redis under var/ when none is configured."""

import os

from recsys.localservices import ensure_local_services

# Not a secret: a fixed key for local use only; prod.py refuses to start with it.
os.environ.setdefault("SECRET_KEY", "dev-insecure-secret-key-do-not-use-in-production")
os.environ.setdefault("DEBUG", "1")
ensure_local_services()

from .base import *  # noqa: E402,F403
