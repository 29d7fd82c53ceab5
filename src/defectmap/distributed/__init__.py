"""The same jobs on a Ray cluster: benchmark cells as Ray tasks, predictions through Ray Data.

Optional: needs the ``ray`` extra (``pip install 'defectmap[ray]'``). Importing this package
imports no Ray; each entry point imports it when called and raises
:class:`~defectmap.distributed.cluster.RayUnavailableError` (one line) without it. Nothing
else in defectmap imports this package except the command line.

* :mod:`~defectmap.distributed.cluster`: the ``--ray`` address and the Ray session.
* :mod:`~defectmap.distributed.benchmark`: :func:`run_benchmark_on_ray`, each benchmark cell
  one Ray task running :func:`defectmap.evaluate.benchmark.run_cell`.
* :mod:`~defectmap.distributed.predict`: :func:`predict_on_ray`, Ray Data reads the images, a
  pool of model actors runs :func:`defectmap.evaluate.predict.inspect_chunk`, the results
  stream into the same writer as a local ``predict``.

Every worker must reach the dataset, the images, the model folder and the output folder at
the same paths as the driver (a shared file system); object-store URLs are refused.
"""

from defectmap.distributed.benchmark import RayExecutor, run_benchmark_on_ray
from defectmap.distributed.cluster import RayUnavailableError, parse_address, ray_session
from defectmap.distributed.predict import predict_on_ray

__all__ = ["RayExecutor", "RayUnavailableError", "parse_address", "predict_on_ray",
           "ray_session", "run_benchmark_on_ray"]
