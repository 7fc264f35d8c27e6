# The RunPod serverless worker: `python -m mt_assets.worker` on one GPU, every model file read
# from the network volume at /runpod-volume. The image holds code only, no model weights: the
# volume is the one place they live, provisioned and verified by `mt-assets provision`/`audit`.
#
#   docker build --platform linux/amd64 -t <registry>/<user>/mt-assets-worker:0.1.0 .
#
# No Docker daemon runs where this project is developed and tested: mt_assets_tests/test_dockerfile.py
# lints this file with hadolint, checks the settings below, and imports the entry point without Dagster.

# TORCH_VERSION is the one source of the torch version: the base tag is built from it, and
# constraints-cuda.txt must pin the same version (checked at build time below and by the tests).
# The base is PyTorch's own CUDA runtime image (Python in /opt/conda), which carries torch 2.13.0
# built for CUDA 12.6 (the cu126 wheel): the torch this project is tested with. CUDA 12.6 rather than 13.x: it runs on
# host drivers from R525 up through CUDA's minor-version compatibility, where CUDA 13 builds need
# R580+, and it has kernels for A100 (sm_80), L40S (sm_89), H100 and H200 (sm_90). Blackwell GPUs
# (B200, RTX PRO 6000) need a CUDA 12.8+ build: pass --build-arg CUDA_VERSION=13.0 (same torch).
#
# The tag can be re-pushed upstream; for reproducible rebuilds pin the digest as well, after
# reading it with `docker buildx imagetools inspect pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime`:
#   FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-runtime@sha256:<digest>
ARG TORCH_VERSION=2.13.0
ARG CUDA_VERSION=12.6
FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-runtime
ARG TORCH_VERSION
ARG CUDA_VERSION

# No system packages: PyAV's wheel bundles FFmpeg (libx264, AAC) and soundfile's bundles
# libsndfile, so the renders' H.264 + AAC output and the audio reading need nothing from apt.
WORKDIR /opt/mt_assets/src

# Dependencies first, from the packaging files alone, so a code change rebuilds only the small
# layer below. A stub package stands in for mt_assets here; the real one replaces it next.
# The constraints hold torch at the base image's build: should a dependency ever ask for another
# torch, pip would otherwise replace it with PyPI's default build (multi-GB, another CUDA); with the
# pin the build fails instead. The `worker` extra brings the RunPod SDK; Dagster lives in the
# `dagster` extra, which the worker never installs.
COPY setup.py pyproject.toml constraints-cuda.txt ./
RUN grep -qx "torch==${TORCH_VERSION}" constraints-cuda.txt \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
    && mkdir mt_assets && touch mt_assets/__init__.py \
    && python -m pip install --no-cache-dir -c constraints-cuda.txt ".[worker]" \
    && python -m pip uninstall -y mt_assets \
    && rm -rf mt_assets build mt_assets.egg-info

# The package itself, without touching the dependencies installed above. Then prove that the
# torch pip left in place is still the base image's CUDA build.
COPY mt_assets ./mt_assets
RUN python -m pip install --no-cache-dir --no-deps --force-reinstall -c constraints-cuda.txt ".[worker]" \
    && rm -rf build mt_assets.egg-info \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}' and torch.version.cuda == '${CUDA_VERSION}', (torch.__version__, torch.version.cuda)"

# Offline by construction: every file the worker loads is on the volume and declared in the
# manifest, so any Hub lookup is a bug that must fail, not a silent download. HF_HOME points at
# the volume's state folder so that nothing a library might write lands on the container disk;
# the offline proof (`mt-assets verify-offline`) shows that nothing is read from it. The profile
# is not set here: the endpoint names it, MT_PROFILE=multitalk-480p or MT_MANIFEST=<a lock file on
# the volume>, and the worker refuses the two at once, so a default here would collide with the latter.
ENV MT_VOLUME=/runpod-volume \
    HF_HOME=/runpod-volume/.mt/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Run from a folder without the source tree in it, so `python -m` imports the installed package
# rather than /opt/mt_assets/src/mt_assets, and never from the volume (a network filesystem that
# would be searched for every import).
WORKDIR /opt/mt_assets

# The worker runs as root, on purpose. It writes to the volume: renders into outputs/<job>/ and
# jobs/, the hash cache, locks and staging under .mt/. The volume's folders are owned by root
# (pods, where it is provisioned, run as root by default) and serverless offers no setting for
# the worker's uid or the mount's owner, so a non-root user would fail on its first write. Each worker is its own container; the image holds no secrets. If the volume is
# ever made writable for a fixed uid, add that user here and switch to it with USER.
CMD ["python", "-u", "-m", "mt_assets.worker"]
