"""SimulTrain: pipelined split training across an edge device and a cloud service.

The distribution installs one import package, ``simultrain``:

- ``simultrain.shared`` (folder ``shared/``): the sans-I/O wire protocol, split models, data
  sources and the training step math. It imports no service.
- ``simultrain.cloud``, ``simultrain.edge``, ``simultrain.coordinator`` (folders under
  ``services/``): thin asyncio services over ``simultrain.shared``. They never import each other.
- ``simultrain.cli``: the ``simultrain`` command.
"""

__version__ = "0.1.0"
