"""What every process of the router shares and nothing else: the settings (one table, read
the same way by the API, the workers and the CLI) and small helpers with no dependency on
Flask, Celery or Redis. Everything else may import `core`; `core` imports nothing of ours.
"""
