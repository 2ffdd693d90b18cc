# syntax=docker/dockerfile:1
# Stateport's service image: `docker build -t stateport .`, or `docker compose up --build` (compose.yaml).
#
# The base is pinned by its patch tag and its digest: a rebuild gets the same Python and Debian. To move
# it, update both (`docker buildx imagetools inspect python:3.11.X-slim-bookworm` prints the digest).
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The SQLite file (the embedded default) and the generated JWT secret live on the volume below.
    STATEPORT_DATA_DIR=/var/lib/stateport

RUN useradd --system --create-home --uid 10001 stateport \
    && mkdir -p /var/lib/stateport && chown stateport /var/lib/stateport

WORKDIR /app

# The dependency layer: built from pyproject.toml and constraints.txt alone, so a change to src/ reuses it.
# It installs the server extra's requirements at the locked versions, without the project itself.
COPY pyproject.toml constraints.txt ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
wanted, todo = set(), ["server"]
while todo:
    for requirement in extras[todo.pop()]:
        if requirement.startswith("stateport["):
            todo.extend(requirement[len("stateport["):-1].split(","))
        else:
            wanted.add(requirement)
print("\n".join(sorted(wanted | set(project["dependencies"]))))
PY
RUN pip install -r /tmp/requirements.txt -c constraints.txt

# The project itself: its dependencies are all there already.
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . && rm -rf /app/src /app/build

USER stateport
VOLUME ["/var/lib/stateport"]
EXPOSE 8080
# /health/live answers 200 while the process serves; python is in the image, curl is not.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2)"]
CMD ["stateport", "serve", "--host", "0.0.0.0", "--port", "8080"]
