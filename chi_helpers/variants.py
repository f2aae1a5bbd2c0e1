"""The GPU variants the series can run on, as data: one profile per variant, nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    site: str
    reservation: str  # "node": a bare-metal host by name; "flavor": a GPU VM flavor
    node_type: str  # bare-metal node type, or the VM flavor
    default_node: str  # a host known to have two GPUs ("" when the student must pick one)
    gpus: int
    gpu_model: str
    image: str
    gpu_tool: str  # the command that shows the GPUs
    metrics_library: str  # what MLflow's system metrics read GPU figures with
    jupyter_dockerfile: str
    docker_gpu_flags: str
    fast_num_workers: int  # DataLoader workers for the utilization lesson on this node
    needs_security_groups: bool
    # Minutes a whole training takes on this hardware at the lesson's sizes (the course's figures for the
    # two bare-metal variants; for the VM an estimate, not measured). The notebooks and the lease
    # timeline in notebook 00 quote them.
    tracked_run_minutes: int
    lightning_run_minutes: int
    # Minutes the Jupyter image takes to build on the node, mostly pulling its base (estimates, not
    # measured: NVIDIA's PyTorch notebook image is a few GB, the ROCm base about 10 GB compressed).
    # Notebook 04 waits up to twice this long for the build that notebook 02 started.
    image_build_minutes: int

    def as_dict(self) -> dict:
        return asdict(self)


VARIANTS = {
    "nvidia": Variant(
        name="nvidia", title="NVIDIA A100 (compute_liqid)", site="CHI@TACC", reservation="node",
        node_type="compute_liqid", default_node="liqid01", gpus=2, gpu_model="A100 40GB",
        image="CC-Ubuntu24.04-CUDA", gpu_tool="nvidia-smi", metrics_library="nvidia-ml-py (pynvml)",
        jupyter_dockerfile="docker/Dockerfile.jupyter-mlflow-cuda", docker_gpu_flags="--gpus all",
        fast_num_workers=16, needs_security_groups=False, tracked_run_minutes=6, lightning_run_minutes=10,
        image_build_minutes=15,
    ),
    "amd": Variant(
        name="amd", title="AMD MI100 (gpu_mi100)", site="CHI@TACC", reservation="node",
        node_type="gpu_mi100", default_node="", gpus=2, gpu_model="MI100",
        image="CC-Ubuntu24.04-ROCm", gpu_tool="rocm-smi", metrics_library="pyrsmi",
        jupyter_dockerfile="docker/Dockerfile.jupyter-mlflow-rocm",
        docker_gpu_flags="--device=/dev/kfd --device=/dev/dri --group-add video --group-add $(getent group render | cut -d: -f3)",
        fast_num_workers=16, needs_security_groups=False, tracked_run_minutes=13, lightning_run_minutes=10,
        image_build_minutes=40,
    ),
    "vm": Variant(
        name="vm", title="NVIDIA H100 virtual machine (KVM@TACC)", site="KVM@TACC", reservation="flavor",
        node_type="g1.h100.pci.1", default_node="", gpus=1, gpu_model="H100",
        image="CC-Ubuntu24.04-CUDA", gpu_tool="nvidia-smi", metrics_library="nvidia-ml-py (pynvml)",
        jupyter_dockerfile="docker/Dockerfile.jupyter-mlflow-cuda", docker_gpu_flags="--gpus all",
        fast_num_workers=16, needs_security_groups=True, tracked_run_minutes=6, lightning_run_minutes=10,
        image_build_minutes=15,
    ),
}
DEFAULT_VARIANT = "nvidia"

# The local target's build: this machine plays the node, on its CPU, with a small data set. Not a GPU
# variant (no lease, no image): its fields fill the same places in the notebooks' text.
LOCAL = Variant(
    name="local", title="this computer (the local target)", site="", reservation="none", node_type="",
    default_node="", gpus=0, gpu_model="CPU", image="", gpu_tool="", metrics_library="",
    jupyter_dockerfile="", docker_gpu_flags="", fast_num_workers=2, needs_security_groups=False,
    tracked_run_minutes=1, lightning_run_minutes=1, image_build_minutes=0,
)
TARGETS = ("local", "chameleon")


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}: set variant to one of {', '.join(map(repr, VARIANTS))} "
            "in the parameters cell"
        ) from None
