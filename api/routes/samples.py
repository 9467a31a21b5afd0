"""Samples (with their image files) and checkpoints (with downloads); files only via the artifacts resolver."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import RunForTeam, ServicesDep, SessionDep
from api.routes.responses import errors
from api.schemas import BigDbId, CheckpointPublic, DbId, SamplePublic, StepQuery
from api.services import samples as service

router = APIRouter(prefix="/runs/{run_id}", tags=["samples"], responses=errors(401, 404))


@router.get("/samples")
def list_samples(run: RunForTeam, session: SessionDep, step: StepQuery | None = None) -> list[SamplePublic]:
    return service.list_samples(session, run=run, step=step)


@router.get("/samples/steps")
def sample_steps(run: RunForTeam, session: SessionDep) -> list[int]:
    """Steps at which the run logged samples."""
    return service.sample_steps(session, run=run)


@router.get("/samples/{sample_id}/image", response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
def sample_image(
    run: RunForTeam, sample_id: BigDbId, session: SessionDep, services: ServicesDep, thumb: bool = False
) -> FileResponse:
    """The PNG (or its thumbnail)."""
    path = service.sample_image_path(
        session, run=run, sample_id=sample_id, data_dir=services.settings.DATA_DIR, thumb=thumb
    )
    return FileResponse(path, media_type="image/png")


@router.get("/checkpoints")
def list_checkpoints(run: RunForTeam, session: SessionDep) -> list[CheckpointPublic]:
    return service.list_checkpoints(session, run=run)


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
def download_checkpoint(run: RunForTeam, checkpoint_id: DbId, session: SessionDep, services: ServicesDep) -> Response:
    """The checkpoint folder as an uncompressed tar (safetensors weights, optimizer state, state.json)."""
    path = service.checkpoint_path(session, run=run, checkpoint_id=checkpoint_id, data_dir=services.settings.DATA_DIR)
    if path.is_file():
        return FileResponse(path, filename=path.name)
    name = f"run{run.id}-{path.name}.tar"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(service.tar_stream(path), media_type="application/x-tar", headers=headers)
