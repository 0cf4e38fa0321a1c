"""The one place settings read environment variables: typed, with defaults, loud when a required one is missing."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_REQUIRED = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | object = _REQUIRED) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is _REQUIRED:
            raise ImproperlyConfigured(f"The environment variable {name} is required but not set.")
        return str(default)
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off).")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [part.strip() for part in raw.split(",") if part.strip()]


WEB = "web"
JOB = "job"
_WEB_COMMANDS = frozenset({"runserver", "testserver"})


def process_role(argv: list[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """``web`` or ``job``: which database limits this process gets (see ``DB_STATEMENT_TIMEOUT_MS``).

    ``DB_PROCESS_ROLE`` decides when set. Otherwise a web server (gunicorn, ``manage.py runserver``) and a test
    run (which exercises the web path) are ``web``; everything else, Celery worker and beat, management commands
    and scripts, is ``job``: an unknown process keeps the long limit, so nothing heavy is cancelled by surprise.
    """
    forced = environ.get("DB_PROCESS_ROLE", "").strip().lower()
    if forced:
        if forced not in (WEB, JOB):
            raise ImproperlyConfigured(f"DB_PROCESS_ROLE={forced!r} is neither {WEB!r} nor {JOB!r}.")
        return forced
    program = os.path.basename(argv[0]) if argv else ""
    if program == "__main__.py":  # python -m <package>
        program = os.path.basename(os.path.dirname(argv[0]))
    if program in ("gunicorn", "pytest", "py.test"):
        return WEB
    if program in ("manage.py", "django-admin") and len(argv) > 1 and argv[1] in _WEB_COMMANDS:
        return WEB
    return JOB
