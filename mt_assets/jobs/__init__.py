"""Render jobs, without torch: what a job is, where its media come from, where it goes.

    schema.py      the job format: fields, defaults, validation (one schema for the CLI, the inbox
                   and the RunPod worker); the job-id rule
    reader.py      the one reader of job files and job folders (YAML or JSON)
    media.py       media references (relative, volume:, s3://, https://, data:) resolved, fetched
                   and decoded
    audio_prep.py  one or two speakers: loudness per speaker, `para`/`add` mixing, the muxed track
    decode.py      a job's media decoded and checked against the job
    hashes.py      the sha256 and size of a job's media (job.json's `media`; a retry is compared by it)
    outputs.py     where a render's output goes (outputs/<id>/)
    queue.py       the queue on the volume: inbox, queued, rendering, done, failed, rejected

Nothing here imports torch, so the inbox sensor, `mt-assets jobs` and a RunPod request can be
checked where no model is loaded (a test imports this package with torch blocked). The computation
is in `mt_assets.render`.
"""
