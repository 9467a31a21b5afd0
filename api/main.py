"""The FastAPI application: routers under /api/v1, service errors as HTTP statuses, the dashboard at /ui."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from api.routes import comparisons, health, metrics, presets, reviews, runs, samples, teams, workers
from api.services import Services
from api.services.errors import InvalidConfigError, ServiceError
from api.settings import Settings

log = logging.getLogger(__name__)
UI_PATH = "/ui"


def api_router() -> APIRouter:
    router = APIRouter()
    for module in (health, runs, metrics, samples, comparisons, presets, reviews, workers, teams):
        router.include_router(module.router)
    return router


def create_app(
    settings: Settings | None = None, services: Services | None = None, *, mount_ui: bool = True
) -> FastAPI:
    """The app for `settings` (default: from the environment). Tests may pass ready `services`."""
    settings = settings or Settings()
    services = services or Services.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title=settings.PROJECT_NAME,
        description="Online RL for flow-matching text-to-image models: runs, metrics, samples, comparisons.",
        openapi_url=f"{settings.API_V1_STR}/openapi.json",
        docs_url="/docs",
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(api_router(), prefix=settings.API_V1_STR)
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    if mount_ui:
        mount_dashboard(app, services)
    return app


def _service_error(request: Request, err: ServiceError) -> JSONResponse:
    if isinstance(err, InvalidConfigError):  # the shape of FastAPI's own 422s: a list of {loc, msg, type, input}
        return JSONResponse(status_code=err.status_code, content={"detail": jsonable_encoder(err.errors)})
    return JSONResponse(status_code=err.status_code, content={"detail": err.message})


def mount_dashboard(app: FastAPI, services: Services) -> None:
    """Mount the Gradio dashboard at /ui when the ui package exists; otherwise a placeholder page."""
    if importlib.util.find_spec("ui") is not None and importlib.util.find_spec("ui.app") is not None:
        from ui.app import mount_dashboard as mount_ui  # the ui package owns its Gradio wiring

        mount_ui(app, services)
    else:

        @app.get(UI_PATH, include_in_schema=False)
        def placeholder() -> HTMLResponse:
            return HTMLResponse(
                "<h1>flowdppo</h1><p>The dashboard is not installed in this build. "
                'The REST API is at <a href="/docs">/docs</a>.</p>'
            )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH)
