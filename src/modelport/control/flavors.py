"""Flavors (`specification`) this node offers, and the capacity check a deploy must pass.

The local backend does not pin CPU or memory to processes; a flavor is what an instance may
expect, and node capacity bounds how many instances one node will run, so a typo such as
`instance_count: 128` is refused instead of forking 128 processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelport.errors import E, PlatformError
from modelport.settings import Settings


@dataclass(frozen=True)
class Flavor:
    name: str
    cpu: float
    memory_mb: int
    display: str


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("modelarts.vm.cpu.1u", 1, 4096, "CPU: 1 vCPU | 4 GiB"),
        Flavor("modelarts.vm.cpu.2u", 2, 8192, "CPU: 2 vCPUs | 8 GiB"),
        Flavor("modelarts.vm.cpu.4u", 4, 16384, "CPU: 4 vCPUs | 16 GiB"),
    )
}


def node_capacity(settings: Settings) -> tuple[float, int]:
    """CPU and memory (MB) the node offers. Local processes share cores, so CPU is oversubscribed 8x."""
    cpu = settings.cpu_capacity if settings.cpu_capacity is not None else max(16.0, (os.cpu_count() or 1) * 8.0)
    if settings.memory_capacity_mb is not None:
        mem = settings.memory_capacity_mb
    else:
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) * 4
    return cpu, mem


def resources(specification: str, custom_spec: dict | None) -> tuple[float, int]:
    if specification == "custom":
        if not custom_spec:
            raise PlatformError(E.INVALID_ARGUMENT, detail="specification 'custom' needs custom_spec {cpu, memory}")
        return float(custom_spec["cpu"]), int(custom_spec["memory"])
    flavor = FLAVORS.get(specification)
    if flavor is None:
        raise PlatformError(E.NO_SUCH_FLAVOR, spec=specification)
    return flavor.cpu, flavor.memory_mb


def specifications_body() -> dict:
    specs = [
        {
            "specification": f.name,
            "billing_spec": f.name,
            "category": "CPU",
            "is_open": True,
            "spec_status": "normal",
            "is_free": True,
            "over_quota": False,
            "extend_params": None,
            "display_en": f.display,
            "display_cn": f.display,
            "source_type": "",
            "cpu_info": {"arch": os.uname().machine, "cpu": f.cpu},
            "memory_info": {"unit": "MB", "memory": f.memory_mb},
        }
        for f in FLAVORS.values()
    ]
    return {"total_count": len(specs), "count": len(specs), "specifications": specs}
