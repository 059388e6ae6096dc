"""``baco serve``: an OpenAI-compatible HTTP server for a BACO engine, and Ray Serve replicas.

Importing this package needs no web framework; :func:`create_app` (FastAPI) and the Ray
deployment import their dependencies when called. Install them with the ``serve`` / ``ray``
extras (``pip install -e ".[serve]"`` or ``bash scripts/install.sh serve`` from a clone).
"""

from __future__ import annotations

import importlib.util
from typing import Any

#: Default bound on generation requests admitted at once (``--max-queue``).
DEFAULT_MAX_QUEUE = 256

SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client")
RAY_MODULES = ("ray.serve",)


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` that cannot be imported here."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a None module
            found = False
        if not found:
            missing.append(name)
    return missing


def require_serve(*, ray: bool = False) -> None:
    """Raise ``ImportError`` naming the install command when the server's extras are missing."""
    missing = missing_modules(SERVE_MODULES)
    extra = "serve"
    if ray:
        missing += missing_modules(RAY_MODULES)
        extra = "ray"
    if missing:
        raise ImportError(
            f"baco serve{' --ray' if ray else ''} needs {', '.join(missing)}: install the "
            f'"{extra}" extra with `pip install -e ".[{extra}]"` from a clone (or `bash '
            f"scripts/install.sh {extra}`)"
        )


def create_app(engine: Any, **options: Any) -> Any:
    """The FastAPI app serving ``engine`` (see :func:`shared_core.serve.app.create_app`)."""
    require_serve()
    from .app import create_app as _create_app

    return _create_app(engine, **options)


__all__ = ["DEFAULT_MAX_QUEUE", "create_app", "missing_modules", "require_serve"]
