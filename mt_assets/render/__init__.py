"""Renders: a job file in, an mp4 with sound out, computing what MeiGen's `MultiTalkPipeline.generate` computes.

Reads top to bottom like diffusers' `pipeline_wan_i2v.py`:

    conditioning.py  size buckets, resize + centre crop, the I2V mask and `y`, speaker masks, CLIP input
    sampler.py       the flow-matching schedule, classifier-free guidance (and APG), the Euler loop, streaming
    colour.py        colour correction of decoded clips towards the conditioning image
    video.py         frames + audio -> H.264/AAC mp4, poster, job.json, written atomically
    pipeline.py      the whole render, and `MultiTalkRenderer.from_volume`: the one way to build a renderer
    run.py           one job end to end: render, write the mp4, poster and job.json

The job itself (schema, reader, media, queue) is `mt_assets.jobs`, which needs no torch.

No Dagster here: `defs/` and the RunPod worker call into this package.
"""
