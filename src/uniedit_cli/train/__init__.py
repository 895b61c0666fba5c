"""``uniedit train``: one stage, one task (editing), one dataset -> a tuned model (the Uni-Edit recipe).

Modules: ``config`` (typed options, YAML + CLI, the resolved config), ``data`` (edit datasets),
``objectives`` (what each family trains and its loss), ``loop`` (the one accelerate loop),
``checkpoints`` (checkpoint-N folders, resume) and ``validation`` (image grids). Only ``config``
is imported by ``uniedit train --help``; the rest import torch when training starts.
"""
