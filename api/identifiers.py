"""Job and event ids from clients, checked before they reach Redis.

A job id goes into key names (`router:job:{id}`), so `job_x:events` would name the job's
stream instead of its hash; an event id goes to XREAD, which takes only ASCII digits. Both
are checked here, bounded in length, so that a malformed one is a 404 or a 400, never a
Redis error or a broken stream.
"""

from __future__ import annotations

import re

from workers.errors import InvalidRequestError, NotFoundError

#: A job's own id (`job_` + hex, tasks created by api.serving.new_job_id) or its
#: completion's (`chatcmpl-` + the same hex).
JOB_ID = re.compile(r"(?:job_|chatcmpl-)[0-9a-f]{1,64}")
#: A Redis stream entry id: milliseconds and sequence number, each an unsigned 64-bit integer.
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1


def job_id_of(raw: str) -> str:
    """The `job_` id that `raw` names (a `chatcmpl-` id names its job); anything that is not
    a job id is `404 job_not_found`, like an unknown job, and is not echoed back."""
    if not JOB_ID.fullmatch(raw):
        raise NotFoundError(
            "No such job: job ids are `job_` or `chatcmpl-` followed by hex digits.",
            param="job_id",
            code="job_not_found",
        )
    return "job_" + raw.removeprefix("chatcmpl-") if raw.startswith("chatcmpl-") else raw


def event_order(checked: str) -> tuple[int, int]:
    """An event id already passed by `event_id`, as a pair that sorts like the stream."""
    ms, _, seq = checked.partition("-")
    return int(ms), int(seq)


def event_id(raw: str, param: str = "Last-Event-ID") -> str:
    """`raw` if it is a stream entry id (`<ms>-<seq>`, ASCII digits); 400 otherwise."""
    found = EVENT_ID.fullmatch(raw)
    if found is None or int(found[1]) > _U64 or int(found[2]) > _U64:
        raise InvalidRequestError(
            f"Invalid {param}: an event id is `<milliseconds>-<sequence>` in ASCII digits, "
            "as the `id:` of an event.",
            param=param,
        )
    return raw
