"""Production: every secret and address from the environment; refuses to start when misconfigured."""

from django.core.exceptions import ImproperlyConfigured

from kernel.env import env_bool

from .base import *  # noqa: F403
from .base import DEBUG, SECRET_KEY

if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production (unset DEBUG or set DEBUG=0).")
if SECRET_KEY.startswith(("dev-insecure", "test-insecure")) or len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be a unique random value of at least 50 characters in production.")

# No demo in production: its storefront pages show any customer's lists without a login and create API keys, and
# runstack creates an admin/admin superuser (a ninth tester found both live under these settings, 6 December).
DEMO_ENABLED = env_bool("DEMO_ENABLED", False)

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 31_536_000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Load balancers probe these over plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
