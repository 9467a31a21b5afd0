"""The service layer: all of the API's logic, called by the REST routes and by the Gradio dashboard (ui/).

Service functions are keyword-only with the session first (like store/), take ids or already-authorised rows,
and return api.schemas models. `Services` bundles what they need: settings, a session factory, the queue and the
cache of verified tokens.

    services = Services.from_settings(Settings())
    with services.session() as session:
        page = runs.list_runs(session, team_id=principal.team_id, filters=RunFilter(status=RunStatus.RUNNING))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from api.services.queue import TaskQueue, make_celery_app
from api.services.teams import TokenCache
from api.settings import Settings
from store.session import make_sessionmaker


@dataclass
class Services:
    settings: Settings
    session_factory: sessionmaker[Session]
    queue: TaskQueue
    tokens: TokenCache = field(default_factory=lambda: TokenCache(ttl=0))  # verified bearer tokens (api.deps)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        app = make_celery_app(
            settings.BROKER_URL, str(settings.broker_folder), visibility_timeout=settings.BROKER_VISIBILITY_TIMEOUT
        )
        return cls(
            settings=settings,
            session_factory=make_sessionmaker(settings.DATABASE_URL),
            queue=TaskQueue(app),
            tokens=TokenCache(ttl=settings.AUTH_CACHE_SECONDS),
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.session_factory() as session:
            yield session

    def close(self) -> None:
        self.session_factory.kw["bind"].dispose()
