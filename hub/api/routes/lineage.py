"""Admin API: training runs (published and refused) and a model version's lineage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path

from hub.api.deps import DENIALS, HubDep, operation_id
from hub.api.schemas import MAX_INT
from hub.api.security import Viewer
from hub.api.views.models import LineageView, TrainingRunView
from hub.ml.lineage import lineage
from hub.ml.registry import RegistryError

router = APIRouter(generate_unique_id_function=operation_id)


@router.get(
    "/models/{name}/runs",
    name="model.runs",
    response_model=list[TrainingRunView],
    responses=DENIALS,
)
def model_runs(name: str, h: HubDep, who: Viewer) -> list[Any]:
    """Every build of the model, refused ones with their figures and the gate that refused."""
    return h.builds.runs(name)


@router.get(
    "/models/{name}/versions/{version}/lineage",
    name="model.lineage",
    response_model=LineageView,
    responses=DENIALS,
)
def model_lineage(
    name: str, version: Annotated[int, Path(ge=1, le=MAX_INT)], h: HubDep, who: Viewer
) -> dict[str, Any]:
    """Datasets, training, metrics, gates, signature, rollouts and devices of a version."""
    try:
        return lineage(h.engine, h.registry, name, version)
    except RegistryError as e:
        raise HTTPException(404, str(e)) from e
