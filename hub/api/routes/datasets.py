"""Admin API: the operator's datasets (ADR 0014), uploaded as files, kept as versions.

    POST /datasets/{name}?label=&task=&format=&filename=   the file as the request body
    GET  /datasets[?name=]                                  every version
    GET  /datasets/{name}[:{version}]                       one (the latest without version)
    GET  /datasets/{name}[:{version}]/file                  its exact bytes

The body streams to a temporary file (size cap: the hub's ``max_dataset_bytes``), is
parsed and checked there, then kept; a refusal answers 422 naming the column and row.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.security import Operator, Viewer
from hub.api.views.datasets import DataVersionView
from hub.app import Hub
from hub.ml.data.files import FORMATS, DatasetFileError
from hub.ml.data.store import DatasetStoreError, StagedFile
from hub.store.tables import DataVersion

router = APIRouter(generate_unique_id_function=operation_id)

BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/datasets/{name}",
    name="dataset.upload",
    status_code=201,
    response_model=DataVersionView,
    responses=DENIALS,
    openapi_extra=BINARY_BODY,
)
async def upload_dataset(
    name: str,
    request: Request,
    response: Response,
    h: HubDep,
    who: Operator,
    audit: Audit,
    label: Annotated[str | None, Query(max_length=256)] = None,
    task: Annotated[str | None, Query(pattern="^(classification|regression)$")] = None,
    format: Annotated[str | None, Query(pattern="^(csv|parquet|npz)$")] = None,
    filename: Annotated[str, Query(max_length=256)] = "",
) -> Any:
    """Upload a CSV, Parquet or NPZ file as the next version of dataset ``name``.

    The same bytes again give the same version back (200 instead of 201).
    """
    store = h.dataset_store
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
        raise HTTPException(413, f"dataset file over the {store.max_bytes} byte limit")
    staged = store.stage()
    try:
        await _receive(request, staged)
    except DatasetStoreError as e:
        staged.discard()
        raise HTTPException(e.status, e.detail) from e
    except BaseException:  # cut off (hub/api/limits.py) or the client went away
        staged.discard()
        raise
    if staged.size == 0:
        staged.discard()
    try:
        added = await run_in_threadpool(
            store.add,
            name,
            staged,
            filename=filename,
            label=label,
            task=task,
            fmt=format,
            created_by=who.keyid,
        )
    except DatasetStoreError as e:
        raise HTTPException(e.status, e.detail) from e
    except DatasetFileError as e:
        raise HTTPException(422, str(e)) from e
    row = added.version
    if not added.created:
        response.status_code = 200
    audit.change(
        row.id,
        after={"dataset": row.id, "sha256": row.sha256, "rows": row.rows, "new": added.created},
    )
    return row


async def _receive(request: Request, staged: StagedFile) -> None:
    async for chunk in request.stream():
        if chunk:
            staged.write(chunk)
    if staged.size == 0:
        raise DatasetStoreError("empty body: send the dataset file as the request body", 400)


@router.get(
    "/datasets", name="dataset.list", response_model=list[DataVersionView], responses=DENIALS
)
def list_datasets(
    h: HubDep, who: Viewer, name: Annotated[str | None, Query(max_length=64)] = None
) -> list[Any]:
    return h.dataset_store.versions(name)


@router.get(
    "/datasets/{ref}", name="dataset.get", response_model=DataVersionView, responses=DENIALS
)
def get_dataset(ref: str, h: HubDep, who: Viewer) -> Any:
    """One version: ``NAME`` (the latest), ``NAME:SEQ`` or ``NAME:SHA256-PREFIX``."""
    return _version(h, ref)


@router.get(
    "/datasets/{ref}/file",
    name="dataset.download",
    responses=DENIALS | {200: {"content": {"application/octet-stream": {}}}},
    response_class=FileResponse,
)
def download_dataset(ref: str, h: HubDep, who: Viewer) -> FileResponse:
    """The version's file, byte for byte as uploaded."""
    row = _version(h, ref)
    ext = row.format if row.format in FORMATS else "npz"
    return FileResponse(
        h.dataset_store.file_path(row),
        media_type="application/octet-stream",
        filename=f"{row.name}-{row.seq}.{ext}",
        headers={"x-sha256": row.sha256},
    )


def _version(h: Hub, ref: str) -> DataVersion:
    try:
        return h.dataset_store.get(ref)
    except DatasetStoreError as e:
        raise HTTPException(e.status, e.detail) from e
