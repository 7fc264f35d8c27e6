"""Renders: a job file in, an mp4 with sound out, computing what MeiGen's `MultiTalkPipeline.generate` computes.

Reads top to bottom like diffusers' `pipeline_wan_i2v.py`:

    job.py           the render job: schema, defaults, validation (one schema for the CLI, Dagster, RunPod)
    media.py         where a job's image and audio come from (relative, volume:, s3://) and how they decode
    audio_prep.py    one or two speakers: loudness per speaker, `para`/`add` mixing, the track that is muxed
    conditioning.py  size buckets, resize + centre crop, the I2V mask and `y`, speaker masks, CLIP input
    sampler.py       the flow-matching schedule, classifier-free guidance (and APG), the Euler loop, streaming
    colour.py        colour correction of decoded clips towards the conditioning image
    video.py         frames + audio -> H.264/AAC mp4, poster, job.json, written atomically
    pipeline.py      the whole render on the components `load_pipeline_components` returns

No Dagster here: `defs/` and the RunPod worker call into this package.
"""
