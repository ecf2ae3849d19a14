"""Heads: (T, hidden) states -> the task's numbers. Per-sequence: poolers (+ a folder's Dense and
Normalize), sequence-classification and yes/no heads, SPLADE; per-token: token vectors,
bge-m3; ragged outputs. May import engine.input_builder (PackedBatch), loading/, models/.
"""
