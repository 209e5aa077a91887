"""Imported once by the atom-map worker pool's fork server (multiprocessing's ``forkserver`` preload, see
:func:`itda_core.jobs.umap_layout.pool_context`): umap-learn is imported here, before any worker is forked, so
every worker starts with it instead of paying the import (~4 CPU seconds) itself. The kernels are not run here
(each worker loads them from numba's cache): two of them run on numba's OpenMP threads, and a process whose
GNU OpenMP has run cannot fork workers that use it."""

from itda_core.jobs.umap_layout import warm_up

warm_up(run_kernels=False)  # never raises: a failure leaves the error to the first map's own call
