"""Speed and memory benchmarks of petl's methods against the floor, full fine-tuning and PEFT (issue 6).

    python -m benchmarks.run [--quick] [--shapes minilm smollm2] [--out runs/benchmarks/cpu-<date>.json]

See benchmarks/README.md for what is measured and how.
"""
