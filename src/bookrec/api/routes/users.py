"""`GET /users`: known readers, paged by cursor over the stored user index, or a uniform random sample."""


from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from bookrec.api.deps import StateDep, check_bounds
from bookrec.api.schemas import RandomUsers, UsersPage, error_responses
from bookrec.store import MAX_USER_ID

router = APIRouter(tags=["users"])


@router.get(
    "/users",
    response_model=UsersPage | RandomUsers,
    summary="Readers with recommendations (paged), or a random sample of them",
    responses=error_responses(422, 503),
)
async def users(
    state: StateDep,
    cursor: Annotated[
        int | None, Query(ge=0, lt=MAX_USER_ID, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    random: Annotated[
        int | None, Query(ge=1, description="Return this many readers drawn uniformly at random"),
    ] = None,
) -> Response:
    check_bounds(
        state.settings, (("query", "limit"), limit, "max_page_size"), (("query", "random"), random, "max_random_users")
    )
    version = await state.versions.current()
    total = await state.reader.count_users(version)
    if random is not None:
        ids = await state.reader.random_users(random, version)
        body: dict = {"users": ids, "total": total}
    else:
        ids, next_after = await state.reader.list_users(cursor, limit, version)
        body = {"users": ids, "next_cursor": next_after, "total": total}
    return Response(orjson.dumps(body), media_type="application/json")
