"""/v1/jobs: read a job's status, progress and result."""

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from storage import jobs

from ..problems import not_found
from ..schemas import JobOut
from ..services import get_session

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: Session = Depends(get_session)):
    job = jobs.get(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return JobOut.model_validate(job)
