"""Weight quantization applied after loading (int8 with SmoothQuant calibration, CPU oneDNN).
May import models/.
"""
