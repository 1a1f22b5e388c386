"""`[core] hostname_callable` for the Celery workers that scripts/airflow_stack.sh starts.

Several workers on one machine share its hostname, so the task instances they run could not tell
them apart. The script starts each worker with AIRFLOW_STACK_WORKER_NAME set to its Celery node
name (e.g. worker-1@myhost); the task processes it runs record that as their hostname. Anywhere
else this is Airflow's default, the machine's fully qualified domain name.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("AIRFLOW_STACK_WORKER_NAME") or socket.getfqdn()
