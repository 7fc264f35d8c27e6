"""`python -m mt_assets.worker`: the RunPod serverless worker process.

Order matters here. The offline switches are set before anything can import a Hugging Face
library; the SDK's log level defaults to INFO before the SDK is imported (its default, DEBUG,
prints every job's input in a local run and every output, base64 videos included); then the volume
is checked and the models loaded once (`startup`), and only then does the SDK start taking jobs.
A volume that is not complete, or a setting that cannot work, ends the process with a non-zero
status and the list of what is wrong on stderr, so RunPod shows an unhealthy worker rather than a
worker that fails every job.

The SDK's own flags pass through, e.g. the local test API server:

    MT_VOLUME=/path/to/volume python -m mt_assets.worker --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

or one local job from ./test_input.json (or --test_input '<json>'):

    MT_VOLUME=/path/to/volume python -m mt_assets.worker
"""

from __future__ import annotations

import os
import sys

from mt_assets.worker.environment import go_offline

go_offline()
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")


def main() -> None:
    from mt_assets.worker.logs import setup_logging

    setup_logging()

    from mt_assets.worker.startup import StartupError, startup

    try:
        worker = startup()
    except StartupError as e:
        print(f"error: mt_assets.worker cannot start: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_status)

    import runpod

    from mt_assets.worker.handler import handle

    def handler(job: dict) -> dict:
        return handle(job, worker)

    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
