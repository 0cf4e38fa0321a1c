"""manage.py runstack: everything `make run` does: migrate, demo data, first model, demo credentials, then serve
the API + admin (gunicorn), a Celery worker and Celery beat until Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandParser

from kernel.api_keys import api_key_create, hash_key
from kernel.models import ApiKey
from storefront.demo.guard import refuse_without_demo

DEMO_USER = "admin"
DEMO_PASSWORD = "admin"  # noqa: S105 - the local demo's documented credentials; refused where the demo is off


class Command(BaseCommand):
    help = "Prepare the local demo (idempotent) and serve API + admin + Celery worker + beat."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        refuse_without_demo("runstack")
        if settings.DEBUG:
            self.stderr.write("DEBUG=1: debug pages are on (development only; they show settings to any client).")
        self._step("Migrating the database", lambda: call_command("migrate", interactive=False, verbosity=0))
        self._step("Loading the demo data (once)", lambda: call_command("load_demo"))
        self._fill_online_state()
        self._train_first_model()
        self._replay_demo_traffic()
        self._ensure_admin()
        plaintext = self._ensure_demo_key()
        call_command("collectstatic", interactive=False, verbosity=0)
        if options["no_serve"]:
            self._banner(options["port"], plaintext, serving=False)
            return
        self._serve(options["port"], options["workers"], plaintext)

    def _step(self, title: str, action: Any) -> None:
        self.stderr.write(self.style.MIGRATE_HEADING(f"==> {title}"))
        started = time.monotonic()
        action()
        self.stderr.write(f"    done in {time.monotonic() - started:.1f} s")

    def _fill_online_state(self) -> None:
        """Imports write Postgres only; the online state (histories, affinities, counters) is rebuilt from it once,
        and again whenever Redis comes back empty."""
        from events import keys
        from kernel import redis_client

        if next(redis_client.get().scan_iter(match=keys.history("*"), count=1000), None) is not None:
            return
        self._step("Building the online state in Redis", lambda: call_command("rebuild_online_state"))

    def _train_first_model(self) -> None:
        if "train" not in get_commands():
            return
        from ranking.selectors import active_version_id

        if active_version_id() is not None:
            self.stderr.write("==> A model version is active; not training again (run `manage.py train`).")
            return
        self._step("Training the first model version", lambda: call_command("train", force=True))

    def _replay_demo_traffic(self) -> None:
        """The demo data are purchases without any recommendation shown: replay its last days through the serving
        pipeline once, so the quality dashboard has figures (labelled as replayed) from the first visit."""
        from storefront.demo.replay import demo_traffic_exists

        if demo_traffic_exists():
            return
        self._step("Replaying the last demo days as traffic", lambda: call_command("replay_demo_traffic"))

    def _ensure_admin(self) -> None:
        user_model = get_user_model()
        if not user_model.objects.filter(username=DEMO_USER).exists():
            user_model.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)

    def _ensure_demo_key(self) -> str:
        """The same local demo key on every run: its plaintext lives in var/ (never committed)."""
        path = Path(settings.BASE_DIR) / "var" / "demo_api_key"
        if path.exists():
            plaintext = path.read_text().strip()
            if ApiKey.objects.filter(key_hash=hash_key(plaintext), revoked_at__isnull=True).exists():
                return plaintext
        _, plaintext = api_key_create(name="demo storefront", scopes=["recommend", "events", "catalog", "admin"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plaintext + "\n")
        path.chmod(0o600)
        return plaintext

    def _banner(self, port: int, key: str, *, serving: bool = True) -> None:
        base = f"http://127.0.0.1:{port}"
        lines = [
            "",
            "recsys is running" if serving else "recsys is ready, not serving (--no-serve); `make run` serves it at:",
            f"  Storefront demo   {base}/",
            f"  Admin             {base}/admin/   (user {DEMO_USER!r}, password {DEMO_PASSWORD!r})",
            f"  API docs          {base}/api/docs/",
            f"  Metrics           {base}/metrics      Health {base}/healthz   Readiness {base}/readyz",
            f"  Demo API key      {key}",
            "",
            "Try:",
            f"  curl -H 'Authorization: Bearer {key}' '{base}/v1/items/85123A'",
            "",
        ]
        self.stdout.write("\n".join(lines))

    def _serve(self, port: int, workers: int, key: str) -> None:
        python = sys.executable
        bindir = Path(python).parent
        var = Path(settings.BASE_DIR) / "var"
        commands = {
            "web": [
                str(bindir / "gunicorn"), "recsys.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                "--threads", "4", "--access-logfile", "-", "--graceful-timeout", "10",
            ],
            "worker": [
                python, "-m", "celery", "-A", "recsys", "worker", "--loglevel", "INFO", "--concurrency", "2",
                "-Q", "default,events,training,indexing", "--hostname", "demo@%h",
            ],
            "beat": [
                python, "-m", "celery", "-A", "recsys", "beat", "--loglevel", "INFO",
                "--schedule", str(var / "celerybeat-schedule"), "--pidfile", "",
            ],
        }  # fmt: skip
        # One metrics directory for web workers and the Celery worker, so /metrics adds up every process.
        metrics_dir = var / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        # Fold-in is many tiny solves: BLAS threads only contend with the other workers for the cores.
        env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "OPENBLAS_NUM_THREADS": "1"}
        processes = {name: subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env) for name, argv in commands.items()}
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(2)
        self._banner(port, key)
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with code {process.returncode}; stopping the rest")
                        stopping = True
                time.sleep(0.5)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in processes.values():
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            self.stderr.write("stopped (Postgres and Redis keep running: `make services-down` stops them)")
