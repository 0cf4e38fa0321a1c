"""Local development: starts the project's own PostgreSQL and Redis under var/ when none is configured."""

import os

from kernel.localservices import ensure_local_services

# Not a secret: a fixed key for local use only; prod.py refuses to start with it.
os.environ.setdefault("SECRET_KEY", "dev-insecure-secret-key-do-not-use-in-production")
# DEBUG stays off unless asked for (`DEBUG=1 make run`): the demo is served like production, without debug pages
# (which list settings) or Django's HTML 404 listing the URL patterns.
ensure_local_services()

from .base import *  # noqa: E402,F403
