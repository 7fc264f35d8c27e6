"""The RunPod serverless worker: render jobs on models loaded once from the network volume.

    python -m mt_assets.worker      __main__.py: offline switches, start-up, the SDK's loop

    environment.py   the offline switches and the settings (MT_VOLUME, MT_PROFILE / MT_MANIFEST,
                     MT_RENDER_DEVICE, MT_OUTPUT_S3)
    volume_check.py  the start-up check of the volume: sizes and the hash cache, no hashing
    startup.py       settings + check + `load_pipeline_components` once -> a Worker
    request.py       a RunPod job's input as a render job; https and data: media fetched
    handler.py       handle(job, worker): the whole job, errors as {"error": ...}
    progress.py      one RunPod progress update per sampling step
    outputs.py       the volume folder, S3 upload or inline base64, and a finished job found again
    redact.py        no secret in any message or log line; logs.py: where log lines go

Core only: nothing here imports Dagster (DESIGN.md), and importing this package imports nothing
heavy, so `python -m mt_assets.worker` can set the offline environment before any Hugging Face
library is imported.
"""
