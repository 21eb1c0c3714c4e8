"""The Celery side of the router, and the Redis state the API and the workers share.

Importing `tasks` (or any shared module) has no side effects: no Celery app, no signal
hooks, no re-exec. The app lives in `tasks.celery`, where `celery -A tasks worker -Q <queue>`
finds it. One task, `router.generate(job_id, attempt)`, routed to the queue of the job's
backend; the message carries only the id and attempt, the request lives in the job hash, so
no prompt ever sits in the broker or shows in Flower.

Shared Redis state (the API, the workers and the CLI import these):

    keys.py          every Redis key, queue name, job status and event type
    jobs.py          the job hash and its event stream; lua/ has one script per transition
    events.py        stream events as Redis fields and back
    dispatch.py      the Celery task message, built and pushed by us
    liveness.py      worker heartbeats and the reaper that redelivers a dead worker's jobs
    health.py        circuit breakers and recent outcomes per backend
    connections.py   Redis clients, one per process
    metrics.py       cluster readings (queues, workers, Redis memory) for /metrics
    redis_server.py  find and run a redis-server (the embedded stack, the tests)

Worker process only (imported by `tasks.celery`, never by the API):

    celery.py        the app: gevent re-exec, Celery config, the task
    celeryconfig.py  Celery's settings
    pools.py         the pool a worker's queues imply
    generate.py      the task and the worker lifecycle hooks
    runtime.py       what a worker holds for its life: clients, backends, heartbeat
    execute.py       one delivery: claim, run the backend, publish, finish
    publisher.py     group commit of stream events
    stopper.py       ending cancelled, superseded and orphaned jobs
    consumer.py      restarting a consumer that stopped taking messages
    flower.py        `irouter flower`, task events on only while watched
"""
