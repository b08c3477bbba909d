# Patch Studio: the web app on the built-in default model (no download needed).
# The install steps are the README's: torch==2.13.0 first, then the package, both under
# constraints.txt (the numeric stack the built-in models were trained with).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATCHSTUDIO_HOST=0.0.0.0 PATCHSTUDIO_PORT=8000 \
    PATCHSTUDIO_DB_PATH=/data/patchstudio.sqlite3 HF_HOME=/hf-cache
WORKDIR /app
COPY . /app

RUN python3 -m venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH
RUN pip install --upgrade pip \
 && pip install -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt -e ".[postgres]"

RUN mkdir -p /data /hf-cache
VOLUME ["/data", "/hf-cache"]
EXPOSE 8000
# Readiness (the database takes a write, a model is loaded); /healthz is liveness only.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
CMD ["patchstudio", "serve"]
