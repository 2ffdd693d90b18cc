"""The app ``stateport serve`` runs (``create_app`` without services: its lifespan opens them) verifies
tokens with the same token service its run core mints them with."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from stateport.config import load_settings
from stateport.http.app import create_app
from stateport.http.providers import SERVICES, TOKENS
from tests.http.conftest import SECRET


async def test_a_token_the_run_core_mints_is_known_to_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app):
        services = app.state[SERVICES]
        verifier = app.state[TOKENS]
        assert services.tokens is verifier
        # What the claim broker does when it hands a task instance out (``ClaimBroker._claimed``).
        token = services.core.claims.tokens.mint_task_token(uuid.uuid4(), ttl_s=60)

        def no_signature_check(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a token this process signed was verified again")

        # The app's verifier knows it as verified: the worker's report skips the signature check.
        monkeypatch.setattr(verifier, "_decode", no_signature_check)
        assert verifier.verify_task_token(token).subject
