# CPU image: the API and its embedded workers. The same image runs `migrate`, `serve` and `worker`.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
# CPU torch first, so the project's bare torch requirement does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY app ./app
COPY storage ./storage
COPY metanets ./metanets
COPY client ./client
RUN pip install . ./client && useradd --uid 10001 --create-home weightscope && mkdir -p /data && chown weightscope /data
USER weightscope
ENV WEIGHTSCOPE_DATA_DIR=/data WEIGHTSCOPE_HOST=0.0.0.0 WEIGHTSCOPE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
CMD ["weightscope-server", "serve"]
