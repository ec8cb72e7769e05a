"""The executor: `claims` (claiming pending actions and the loops that wake it), `attempt`
(running one claimed action to its outcome), `lease` (renewing the claim while it runs) and
`rescue` (sweeping actions whose lease expired). Its SQL lives in `healer.journal.executor`."""

from healer.executor.claims import Executor

__all__ = ["Executor"]
