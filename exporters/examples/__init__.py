"""Built-in example models, used by the README's quick start and by the tests.

Each module defines ``make_model()`` and ``example_inputs()``::

    torchport export torchport.exporters.examples.cnn:make_model -o out/cnn
"""
