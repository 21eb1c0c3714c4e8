"""The accounting ledger in Redis: the completions each API process still owes a record, so
that a process that stops before its jobs end does not take their records with it.

    router:accounting:{api}   hash  job id -> the completion's facts (JSON): the model asked
                                    for, the request and key, when it started, the model,
                                    backend and list prices of the job, its deadline
    router:accounting:apis    set   API processes that have opened a ledger hash

An API process adds a job when it submits it (`open`) and takes it out when it records the
completion or learns that the job answers nothing (`remove`: HDEL, which only one caller
can win). A process whose presence in `router:apis` has lapsed is gone: another one takes
its whole hash over in one script (`adopt`) and follows those jobs to their end. Whoever
removes an entry records it, so every entry is recorded once.

Nothing here imports Flask; api/accounting.py decides what to record and when.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from tasks import keys
from tasks.jobs import lua
from tasks.tenants import Hold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """What a record needs of a completion besides how it ended: enough for any API process
    to record it from the job's events alone."""

    job_id: str
    requested: str  # the model asked for (aliases resolved), as the record's `model`
    request_id: str
    key_name: str | None
    started_at: float  # epoch seconds when the request arrived
    model: str  # the model that answers (another one after a fallback)
    backend: str
    input_price: float  # USD per 1M tokens, the registry's list price at submission
    output_price: float
    deadline: float  # epoch seconds; the job cannot run past it
    hold: Hold | None = None  # what admission reserved of the key's limits (api/tenancy.py)

    def dumps(self) -> str:
        facts = asdict(self)
        del facts["job_id"]
        return orjson.dumps(facts).decode()

    @classmethod
    def loads(cls, job_id: str, raw: str) -> Entry | None:
        """The entry stored for `job_id`, or None if it cannot be read."""
        try:
            facts: dict[str, Any] = orjson.loads(raw)
            hold = facts.pop("hold", None)
            return cls(job_id=job_id, hold=Hold(**hold) if hold else None, **facts)
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.error("accounting: ledger entry of job %s unreadable (%s); dropped", job_id, exc)
            return None


class Ledger:
    """The ledger operations, each one round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._adopt = client.register_script(lua("adopt"))

    def open(self, owner: str, entry: Entry) -> None:
        """Owe the record of `entry` (raises redis.RedisError if Redis did not take it)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.ledger_key(owner), entry.job_id, entry.dumps())
        pipe.sadd(
            keys.LEDGER_OWNERS, owner
        )  # again each time: an adopter may have taken us for gone
        pipe.execute()

    def remove(self, owner: str, job_ids: list[str]) -> list[bool]:
        """Take `job_ids` out of `owner`'s ledger; True for each one this call removed (its
        record is this caller's to write), False for one already gone (adopted elsewhere)."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hdel(keys.ledger_key(owner), job_id)
        return [bool(n) for n in pipe.execute()]

    def adopt(self, owner: str) -> list[Entry]:
        """Move into `owner`'s ledger the entries of every API process that is gone; the
        entries moved, now `owner`'s to record."""
        members: Any = self.redis.smembers(keys.LEDGER_OWNERS)
        others = sorted(str(api) for api in members if api != owner)
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for api in others:
            self._adopt(
                keys=[keys.APIS, keys.LEDGER_OWNERS, keys.ledger_key(api), keys.ledger_key(owner)],
                args=[api, owner],
                client=pipe,
            )
        adopted: list[Entry] = []
        unreadable: list[str] = []
        for api, flat in zip(others, pipe.execute(), strict=True):
            pairs = list(zip(flat[::2], flat[1::2], strict=True))
            if pairs:
                log.info("accounting: adopted %d jobs of API process %s", len(pairs), api)
            for job_id, raw in pairs:
                entry = Entry.loads(job_id, raw)
                if entry is None:
                    unreadable.append(job_id)
                else:
                    adopted.append(entry)
        self.remove(owner, unreadable)
        return adopted
