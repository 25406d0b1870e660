"""Synchronous HTTP client for the Weightscope API (checkpoints, analyses, jobs, runs, telemetry, warnings).

Needs only httpx. Uploading a torch state dict converts it to safetensors locally (imports torch only then), so the
server never has to unpickle anything from this client.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_TIMEOUT = 30.0


class WeightscopeError(Exception):
    """An error response from the server; ``problem`` holds the RFC 9457 body (type, title, status, detail, ...)."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        title = problem.get("title") or "HTTP error"
        detail = problem.get("detail")
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Run:
    """A run handle: the client that talks to the server and the run's id (what SpectralMonitor posts to)."""

    client: WeightscopeClient
    id: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WarningsPage:
    """One answer of the warnings endpoint; ``not_modified`` is True on a 304 (then ``items`` is empty)."""

    items: list[dict[str, Any]]
    cursor: str | None
    etag: str | None
    not_modified: bool = False


def encode_metric(value: float) -> float | str:
    """Wire form of a metric: finite floats as numbers, NaN/Inf as the strings "NaN", "Infinity", "-Infinity"."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def telemetry_record(step: int, layer: str, metrics: Mapping[str, float]) -> dict[str, Any]:
    """One telemetry record in the wire schema of client/README.md."""
    return {"step": int(step), "layer": str(layer), "metrics": {k: encode_metric(v) for k, v in metrics.items()}}


# safetensors dtype names for the torch dtypes we can serialise
_SAFETENSORS_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8",
    "torch.bool": "BOOL", "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2",
}


def state_dict_to_safetensors(state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise a mapping of name -> torch tensor to safetensors bytes (tied tensors are written once per name).

    Format: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, then the raw
    little-endian tensor bytes in header order.
    """
    import torch

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is not a tensor ({type(tensor).__name__})")
        dtype = _SAFETENSORS_DTYPES.get(str(tensor.dtype))
        if dtype is None:
            raise TypeError(f"{name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data section to 8 bytes
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)


class WeightscopeClient:
    """Sync client. ``base_url`` like "http://127.0.0.1:8000"; ``api_key`` is sent as ``Authorization: Bearer``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls) -> WeightscopeClient:
        """Client from WEIGHTSCOPE_URL (default http://127.0.0.1:8000) and WEIGHTSCOPE_API_KEY."""
        return cls(os.environ.get("WEIGHTSCOPE_URL", "http://127.0.0.1:8000"), os.environ.get("WEIGHTSCOPE_API_KEY"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WeightscopeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, expect: Iterable[int] = (200,), **kwargs: Any) -> httpx.Response:
        """Send a request; raise WeightscopeError (with the problem body) on a status outside ``expect``."""
        response = self._http.request(method, path, **kwargs)
        if response.status_code not in tuple(expect):
            self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        """Raise WeightscopeError carrying the response's problem+json body (or its text when not JSON)."""
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        if not isinstance(problem, dict):
            problem = {"detail": str(problem)}
        problem.setdefault("status", response.status_code)
        raise WeightscopeError(response.status_code, problem)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def upload_checkpoint(
        self,
        source: Any,
        *,
        name: str,
        run: str | None = None,
        step: int | None = None,
        tags: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Upload a checkpoint: a state dict or nn.Module (converted to safetensors here), bytes, or a file path.

        A path is sent as-is (the server validates its format); prefer .safetensors files.
        """
        params: dict[str, Any] = {"name": name}
        if run is not None:
            params["run"] = run
        if step is not None:
            params["step"] = int(step)
        tag_list = [str(t) for t in tags]
        if tag_list:
            params["tags"] = ",".join(tag_list)
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            headers["Content-Length"] = str(path.stat().st_size)  # streamed, but with a length the server can check
            with open(path, "rb") as fh:
                return self._request("POST", "/v1/checkpoints", params=params, content=fh, headers=headers,
                                     expect=(200, 201)).json()
        if isinstance(source, (bytes, bytearray, memoryview)):
            body = bytes(source)
        else:
            if hasattr(source, "state_dict") and callable(source.state_dict):
                source = source.state_dict()
            body = state_dict_to_safetensors(source)
        return self._request("POST", "/v1/checkpoints", params=params, content=body, headers=headers,
                             expect=(200, 201)).json()

    def list_checkpoints(
        self,
        *,
        run: str | None = None,
        tag: str | None = None,
        name: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{items, next_page_token}``."""
        params = {k: v for k, v in {"run": run, "tag": tag, "name": name, "page_size": page_size,
                                    "page_token": page_token}.items() if v is not None}
        return self._request("GET", "/v1/checkpoints", params=params).json()

    def iter_checkpoints(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """All checkpoints matching the filters of ``list_checkpoints``, following ``next_page_token``."""
        token = None
        while True:
            page = self.list_checkpoints(page_token=token, **filters)
            yield from page.get("items", [])
            token = page.get("next_page_token")
            if not token:
                return

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/checkpoints/{checkpoint_id}").json()

    def get_checkpoint_tensors(self, checkpoint_id: str) -> Any:
        return self._request("GET", f"/v1/checkpoints/{checkpoint_id}/tensors").json()

    def download_checkpoint(self, checkpoint_id: str, dest: str | os.PathLike | None = None) -> bytes | Path:
        """The stored file: returned as bytes, or streamed to ``dest`` (returns that path)."""
        if dest is None:
            return self._request("GET", f"/v1/checkpoints/{checkpoint_id}/file").content
        with self._http.stream("GET", f"/v1/checkpoints/{checkpoint_id}/file") as response:
            if response.status_code != 200:
                response.read()
                self._raise_for(response)
            with open(dest, "wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        return Path(dest)

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self._request("DELETE", f"/v1/checkpoints/{checkpoint_id}", expect=(200, 202, 204))

    # -- analyses and jobs -------------------------------------------------------------------------------------
    def submit_analysis(self, checkpoint_id: str, kind: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Queue an analysis; returns the job (``{id, kind, status, ...}``)."""
        return self._request("POST", f"/v1/checkpoints/{checkpoint_id}/analyses",
                             json={"kind": kind, "params": dict(params or {})}, expect=(200, 201, 202)).json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def wait_job(self, job_id: str, *, timeout: float = 600.0, poll: float = 1.0) -> dict[str, Any]:
        """Poll a job until it succeeds or fails; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.get("status") in ("succeeded", "failed"):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout}s")
            time.sleep(poll)

    # -- runs, telemetry, warnings -----------------------------------------------------------------------------
    def create_run(
        self, name: str, *, model: Mapping[str, Any] | str | None = None,
        detectors: Mapping[str, Any] | Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Create a run; ``model`` is a free-form description (a name or a JSON object); ``detectors`` maps detector name -> config overrides (see
        metanets.detectors) or lists names; absent: every detector with its defaults."""
        body: dict[str, Any] = {"name": name}
        if model is not None:
            body["model"] = model
        if detectors is not None:
            body["detectors"] = dict(detectors) if isinstance(detectors, Mapping) else list(detectors)
        return self._request("POST", "/v1/runs", json=body, expect=(200, 201)).json()

    def start_run(
        self, name: str, *, model: Mapping[str, Any] | str | None = None,
        detectors: Mapping[str, Any] | Iterable[str] | None = None,
    ) -> Run:
        """Create a run and return a handle for SpectralMonitor."""
        info = self.create_run(name, model=model, detectors=detectors)
        return Run(client=self, id=str(info["id"]), info=info)

    def run(self, run_id: str) -> Run:
        """A handle on an existing run (no request is made)."""
        return Run(client=self, id=str(run_id))

    def list_runs(self, **params: Any) -> dict[str, Any]:
        return self._request("GET", "/v1/runs", params=params).json()

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/runs/{run_id}").json()

    def get_series(
        self, run_id: str, metric: str, *, layer: str = "_step", since_step: int | None = None, max_points: int | None = None
    ) -> list[list[Any]]:
        """[step, value] points of one metric of one layer, downsampled by the server (spikes kept)."""
        params: dict[str, Any] = {"metric": metric, "layer": layer}
        if since_step is not None:
            params["since_step"] = since_step
        if max_points is not None:
            params["max_points"] = max_points
        return self._request("GET", f"/v1/runs/{run_id}/series", params=params).json()["points"]

    def post_telemetry(self, run_id: str, records: list[dict[str, Any]], *, timeout: float | None = None) -> Any:
        """Post already-encoded records (see ``telemetry_record``); idempotent by (run, step, layer) on the server."""
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        response = self._request("POST", f"/v1/runs/{run_id}/telemetry", json={"records": records},
                                 expect=(200, 201, 202), **kwargs)
        return response.json() if response.content else None

    def get_warnings(
        self, run_id: str, *, since: str | None = None, wait: float | None = None, etag: str | None = None
    ) -> WarningsPage:
        """Warnings after cursor ``since``; ``wait`` long-polls; ``etag`` (from a previous page) allows a 304."""
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if wait is not None:
            params["wait"] = wait
        headers = {"If-None-Match": etag} if etag else {}
        timeout = httpx.Timeout(DEFAULT_TIMEOUT + (wait or 0))
        response = self._request("GET", f"/v1/runs/{run_id}/warnings", params=params, headers=headers,
                                 expect=(200, 304), timeout=timeout)
        if response.status_code == 304:
            return WarningsPage(items=[], cursor=since, etag=etag, not_modified=True)
        body = response.json()
        return WarningsPage(items=body.get("items", []), cursor=body.get("cursor"), etag=response.headers.get("ETag"))
