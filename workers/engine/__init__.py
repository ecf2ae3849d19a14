"""The step loop and the `Engine` API: scheduler (packs requests by token budget), input
builder (packed batches), runner (device forward), execute loops, feeder, the GPU token budget,
device/dtype choice, profiler window. May import inputs/, heads/, loading/, quant/, models/.
"""
