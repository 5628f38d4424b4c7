"""Records where the benchmark numbers come from, and times float32 as IEEE float32."""
from fusedrnn import bench


def pytest_configure(config):
    bench.set_tf32(False)  # as fusedrnn.bench does by default: no TF32 on either side


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fusedrnn"] = bench.environment(bench.default_device())
