"""compose.yaml is for users with Docker; it is not run here, so check what can be checked by reading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stateport.config import FIELDS, PREFIX

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_it_has_the_service_and_its_stores() -> None:
    services = compose()["services"]
    assert {"stateport", "postgres", "redis", "minio"} <= set(services)


def test_every_stateport_variable_is_a_real_setting() -> None:
    env = compose()["services"]["stateport"]["environment"]
    ours = [name for name in env if name.startswith(PREFIX)]
    assert ours, "the service should be configured through STATEPORT_* variables"
    for name in ours:
        assert name[len(PREFIX) :] in FIELDS, f"{name} is not a Stateport setting"


def test_the_service_points_at_the_compose_stores() -> None:
    services = compose()["services"]
    env = services["stateport"]["environment"]
    pg = services["postgres"]["environment"]
    assert env["STATEPORT_DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert env["STATEPORT_REDIS_URL"].startswith("redis://redis:6379")
    assert env["STATEPORT_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert env["STATEPORT_S3_BUCKET"] in " ".join(services["minio-init"]["command"])


def test_start_order_waits_for_healthy_stores() -> None:
    services = compose()["services"]
    depends = services["stateport"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio", "stateport"):
        assert "healthcheck" in services[name], name
    for volume_user in ("postgres", "redis", "minio", "stateport"):
        for volume in services[volume_user]["volumes"]:
            assert volume.split(":")[0] in compose()["volumes"]


def test_the_service_is_built_from_this_repo_and_serves() -> None:
    service = compose()["services"]["stateport"]
    assert service["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert service["command"][:2] == ["stateport", "serve"]
    port = service["command"][service["command"].index("--port") + 1]
    assert any(mapping.endswith(f":{port}") for mapping in service["ports"])
    assert "/health/ready" in " ".join(service["healthcheck"]["test"])


def test_no_placeholder_jwt_secret() -> None:
    # Issue #18: a default secret was used without a word (and was too short for HS512). Unset, the
    # service generates one into its data volume; the file says so.
    service = compose()["services"]["stateport"]
    assert service["environment"]["STATEPORT_JWT_SECRET"] == "${STATEPORT_JWT_SECRET:-}"
    assert service["environment"]["STATEPORT_DATA_DIR"] == "/var/lib/stateport"
    assert any(volume.endswith(":/var/lib/stateport") for volume in service["volumes"])
    assert "generates one on its" in (ROOT / "compose.yaml").read_text()


def test_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "image" in service:
            tag = service["image"].partition(":")[2]
            assert tag and tag != "latest" and any(c.isdigit() for c in tag), (name, service["image"])
