"""The production control plane: Dagster on Postgres, with the webserver, the daemon and the runs as
separate processes. What runs where:

    Postgres           run, event log and schedule storage for every process below (DAGSTER_PG_URL);
                       the only state that must survive a restart, so the one thing to back up
    dagster-webserver  the UI and its GraphQL API; reads and writes Postgres, loads the code location
                       to show the asset graph, launches nothing itself: a run it starts is queued
    dagster-daemon     sensors (render_inbox, volume_drift, volume_automation), schedules, the run
                       queue (dequeues runs within the run limit and the pools), run monitoring and
                       run retries; launches each run as a process of its own (DefaultRunLauncher),
                       so runs live on the daemon's machine, beside the GPU
    code location      `mt_assets` (the module, or a workspace.yaml): loaded by a code server that
                       each of the two starts for itself; the run workers start from the daemon's
    the GPU side       local: renders run in the run worker on this machine's device, one at a time
                       per `gpu` pool slot (MT_GPU_SLOTS); RunPod: the run worker sends the job to
                       the endpoint, and the `runpod` pool (MT_RUNPOD_SLOTS) follows its worker count
    the volume         MT_VOLUME, mounted where the daemon's runs execute
    compute logs       each step's stdout/stderr: local under $DAGSTER_HOME, or S3 (MT_COMPUTE_LOGS_S3)
                       when the webserver is on another machine than the runs

`instance.py` assembles the instance configuration (the shipped `dagster.yaml` plus the environment);
`serve.py` is `make serve`: migrate, set the pools, start both processes, stop both on Ctrl-C.
Nothing here imports Dagster.
"""
