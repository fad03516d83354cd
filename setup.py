from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rdrop-fairseq",
    version="0.1.0",
    description="R-Drop (Regularized Dropout, NeurIPS 2021) as a fairseq plugin",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["rdrop_fairseq", "rdrop_fairseq.*"]),
    install_requires=[
        # fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed is a build of
        # fairseq main for it.  Both install the `fairseq` package.
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "fairseq>=0.12.2; python_version < '3.11'",
        # rdrop_fairseq.safe_load needs torch.serialization's allow-list API of 2.6.
        "torch>=2.6",
        "numpy",
        "sacrebleu>=2.0",
        "sentencepiece",
        "subword-nmt",
        "sacremoses",
        "pooch>=1.6",
        "matplotlib",
        "pyyaml",
        "rouge-score",
        "pysbd",  # sentence splitting for ROUGE-Lsum, without nltk's downloaded models
    ],
    extras_require={
        # The fused CUDA loss kernel; on a CPU the tests run it under Triton's interpreter.
        "triton": ["triton>=3.3; platform_system == 'Linux'"],
        "test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3", "triton>=3.3; platform_system == 'Linux'"],
    },
    entry_points={"console_scripts": ["rdrop-fairseq=rdrop_fairseq.cli:main"]},
)
