"""/presets: the named configs runs and comparisons can start from."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentTeam
from api.routes.responses import errors
from api.schemas import PresetPublic
from api.services import configs as service

router = APIRouter(prefix="/presets", tags=["presets"], responses=errors(401))


@router.get("")
def list_presets(team: CurrentTeam) -> list[PresetPublic]:
    return service.list_presets()
