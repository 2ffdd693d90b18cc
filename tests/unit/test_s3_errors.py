"""How botocore's failures read once translated (``stateport.adapters.s3.errors``)."""

from __future__ import annotations

from botocore.exceptions import ParamValidationError

from stateport.adapters.s3.errors import translate
from stateport.domain.errors import Unavailable


def test_a_message_of_several_lines_keeps_its_reason() -> None:
    # An outsider's find: STATEPORT_S3_BUCKET='bad bucket!' stopped the server with "Parameter validation
    # failed:", the reason, on botocore's next line, cut off.
    error = translate(ParamValidationError(report='Invalid bucket name "bad bucket!": must match'), "b")
    assert isinstance(error, Unavailable)
    assert error.detail.endswith('Parameter validation failed: Invalid bucket name "bad bucket!": must match')
