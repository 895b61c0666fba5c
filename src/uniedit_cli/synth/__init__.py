"""``uniedit synth``: VQA data -> reasoning-intensive edit data (the Uni-Edit pipeline).

Steps, each a module: ``sources/`` (VQA records), ``classify``, ``instructions`` (a
deterministic grammar over reasoning programs), ``rewrite`` (optional LLM fluency pass),
``targets`` (scene-world renderer or an editor model), ``verify`` (judge re-asks the embedded
question; CLIP scores), ``writer`` (parquet shards, manifest, preview). ``records`` holds the
types they pass along.
"""
