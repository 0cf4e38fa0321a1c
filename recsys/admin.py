"""Admin site wiring of the project: the catalog pages' recommendation panels (they ask ranking and events, so they
live at the top, in recsys/admin_panels.py) register themselves on import. Each app registers its own pages."""

from recsys import admin_panels  # noqa: F401
