"""Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ..observability import metrics_response
from ..schemas import Health
from ..services import Services, get_services

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz():
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Database and blob store reachable")
def readyz(services: Services = Depends(get_services)):
    checks = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM checkpoints LIMIT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["blob_store"] = "ok" if services.blobs.writable() else "unavailable: not writable"
    healthy = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


router.add_api_route("/metrics", metrics_response, methods=["GET"], include_in_schema=False)
