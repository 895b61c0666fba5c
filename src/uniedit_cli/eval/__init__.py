"""``uniedit eval``: benchmark suites with their official protocols, batched and resumable.

``metrics`` holds the metric implementations (image metrics batched on the GPU, VQA answer
normalisation, MME scoring); ``suites/`` one module per benchmark (a :class:`Suite`);
``run`` generates the model's outputs through the shared batch runner (cached, resumable,
split across ranks) and scores them; ``report`` writes results.json, samples.jsonl and
report.html.
"""
