"""The REST application: routers under /api/v1 and service errors as HTTP statuses.

The REST app only; server.py (the composition root) mounts the dashboard onto it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.error_bodies import request_validation_error, safe_errors
from api.routes import comparisons, health, metrics, presets, reviews, runs, samples, teams, workers
from api.services import Services
from api.services.errors import InvalidConfigError, ServiceError
from api.settings import Settings

log = logging.getLogger(__name__)


def api_router() -> APIRouter:
    router = APIRouter()
    for module in (health, runs, metrics, samples, comparisons, presets, reviews, workers, teams):
        router.include_router(module.router)
    return router


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
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
    app.add_exception_handler(RequestValidationError, request_validation_error)  # type: ignore[arg-type]
    return app


def _service_error(request: Request, err: ServiceError) -> JSONResponse:
    if isinstance(err, InvalidConfigError):  # the shape of FastAPI's own 422s: a list of {loc, msg, type, input}
        return JSONResponse(status_code=err.status_code, content={"detail": safe_errors(err.errors)})
    return JSONResponse(status_code=err.status_code, content={"detail": err.message})
