"""gunicorn settings read from the working directory by every `gunicorn recsys.wsgi` started here (`make run`, the
benches, a deployment from this checkout). Command-line flags override them."""

from recsys import gunicorn_errors

# The request line: gunicorn's largest bounded limit (8,190 bytes; its default is 4,094), about what a CDN passes
# on (CloudFront: 8,192). Longer lines are answered 414 by gunicorn itself, in JSON (below); Django's side answers
# 414 in JSON past the same length under any other server (recsys/wsgi_guards.py). docs/reliability.md.
limit_request_line = 8190
# One header line, likewise raised to gunicorn's default maximum field size twice over (cookies of a storefront).
limit_request_field_size = 16380

# gunicorn's own error answers (bad request line or header bytes, 414, 431) as JSON instead of an HTML page.
gunicorn_errors.install()
