"""What the servers of one database must share, checked as each starts: its token key and names, blobs.

A token minted by one server is refused by another that verifies with another key (403), and a result one
server wrote to its blob store is not found through another with a store of its own (404): nothing said so
(an outsider's find). Each server at its start replaces the database's marks with its own (a fingerprint of
its token key, the mark of its blob store) and says when the ones it replaced differ. A mismatch therefore
shows at every start of a mismatched server; a key changed on purpose on every server shows once.
"""

from __future__ import annotations

import uuid

from stateport.domain.errors import NotFound
from stateport.domain.ports import BlobStore, DeploymentMarks

# The blob store's own mark: a name outside results/ (which retention deletes), holding a random id.
BLOB_MARK = "stateport-deployment-mark"
# The marks' names.
TOKEN_KEY_MARK = "token_key"  # noqa: S105  # a mark's name, not a secret
TOKEN_NAMES_MARK = "token_names"  # noqa: S105  # as above
BLOB_STORE_MARK = "blob_store"


async def differences(
    marks: DeploymentMarks, blobs: BlobStore, token_key: str, token_names: str = ""
) -> list[str]:
    """What this server does not share with the one that started before it on the same database:
    ``token_key`` (its fingerprint), ``token_names`` (the issuer, audiences and key id its tokens carry,
    which every server checks as well: an issuer set otherwise on one server was refused by the other
    with no word at start, an outsider's find), its blob store."""
    said: list[str] = []
    if (before := await _swapped(marks, TOKEN_KEY_MARK, token_key)) is not None:
        said.append(
            f"the server that started before this one on its database verifies tokens with another key "
            f"({before}; this one {token_key}): a token one of them mints is refused by the other. Give "
            "every server of one database the same STATEPORT_JWT_SECRET (or key files); after a change of "
            "key on every server, this is said once"
        )
    if (before := await _swapped(marks, TOKEN_NAMES_MARK, token_names)) is not None:
        said.append(
            f"the server that started before this one on its database names its tokens otherwise ({before}; "
            f"this one {token_names}): a token one of them mints is refused by the other. Give every server "
            "of one database the same STATEPORT_JWT_ISSUER, STATEPORT_JWT_AUDIENCE, STATEPORT_API_AUDIENCE "
            "and STATEPORT_JWT_KID"
        )
    if await _swapped(marks, BLOB_STORE_MARK, await _blob_store_mark(blobs)) is not None:
        said.append(
            "the server that started before this one on its database keeps results in another blob store "
            "(or this one's was emptied): results over the inline limit that one wrote are not found here. "
            "Give every server of one database the same blob store (STATEPORT_BLOB_BACKEND=s3, or one shared "
            "STATEPORT_BLOB_DIR)"
        )
    return said


async def _swapped(marks: DeploymentMarks, name: str, mine: str) -> str | None:
    """Make ``mine`` the database's mark ``name``; the earlier one if it was another, else None."""
    before = await marks.swap(name, mine)
    return before if before is not None and before != mine else None


async def _blob_store_mark(blobs: BlobStore) -> str:
    """The blob store's own mark, made (a random id) if it has none yet."""
    try:
        return (await blobs.get(BLOB_MARK)).decode(errors="replace")
    except NotFound:
        mine = uuid.uuid4().hex
        await blobs.put(BLOB_MARK, mine.encode())
        return mine
