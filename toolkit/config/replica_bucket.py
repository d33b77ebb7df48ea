"""What the tracker's replica leaves in the lab's bucket, for those that price it (toolkit.cost.prices), expire it
(infra/bucket.py) and write it (toolkit.tracker.replica): its folder, the DBs it replicates, and how long the LTX files
Litestream deletes (compaction, retention) stay as noncurrent versions in the versioned bucket.
"""

from __future__ import annotations

DBS = ("mlflow.db", "optuna.db")
BUCKET_PREFIX = "replica/"  # gs://<bucket>/replica/<stack>/<db>/
# A day, not the bucket's 30 (infra/bucket.py NONCURRENT_VERSION_DAYS): a noncurrent LTX file restores nothing.
NONCURRENT_DAYS = 1
# Soft delete keeps each a week more after that, whoever deleted it (infra/bucket.py SOFT_DELETE_S).
SOFT_DELETE_DAYS = 7
