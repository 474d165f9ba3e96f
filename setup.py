"""vitjax: vision transformers in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="vitjax",
    version="0.1.0",
    description="Vision transformers in JAX/Flax: models, pretraining, tasks, one trainer.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vitjax", "vitjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax",
        "orbax-checkpoint",
        "tensorflow-cpu; platform_machine=='x86_64'",
        "tensorflow; platform_machine!='x86_64'",
        "tensorflow-datasets",
        "tensorboard",      # tf.summary event files
        "ml_collections",
        "chex",
        "absl-py",
        "einops",
        "numpy",
        "scikit-learn",     # ships the embedded UCI digits
        "safetensors",      # weight import without unpickling
        "pycocotools",      # COCO format I/O and evaluation (detection / segmentation)
        "pillow",
        "scipy",            # Hungarian matching (detection set losses)
    ],
    extras_require={
        # Test oracles only (never imported by the package at run time).
        # torch must be the CPU build: install `torch==2.13.0` first (see .ci/run).
        "test": [
            "pytest",
            "pytest-xdist",
            "torch==2.13.0",
            "transformers",
            "scipy",
            "nbclient",
            "nbformat",
            "ipykernel",
            "matplotlib",
        ],
    },
)
