# pushsync: one image for every role (worker, scheduler, migrations, Flower, metrics, emulators).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin pushsync

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY pushsync ./pushsync
COPY store ./store
COPY worker ./worker
COPY scheduler ./scheduler
COPY emulators ./emulators
RUN pip install -c constraints.txt . && rm -rf /src

USER pushsync
WORKDIR /home/pushsync
ENTRYPOINT ["pushsync"]
CMD ["worker"]
